"""MkDocs hook: render the reST bits of automr's docstrings as Markdown readers expect.

The docstrings are plain prose with reST inline literals (``x``, valid Markdown too), a few
Sphinx roles (:func:`name`) and literal-block markers ("Typical use::"). Markdown keeps the
role prefix as text, so this hook, run on each page's HTML before cross-references are
resolved, turns ``:role:<code>target</code>`` into an optional mkdocs-autorefs reference: a
link when the target is a documented object, plain code otherwise. A relative name
(``seen_mask``, ``Catalog.title``) is linked when exactly one object documented on the same
page ends with it; ``~`` shows only the last component. It also drops the second colon of a
paragraph-ending ``::``.
"""

import re

_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):<code>(~?)([\w.]+)</code>"
)
_OBJECT_ID = re.compile(r'id="(automr(?:\.\w+)+)"')
_LITERAL_MARKER = re.compile(r"::</p>")


def on_page_content(html: str, **kwargs: object) -> str:
    """Rewrite reST roles and literal-block markers in a page's HTML."""
    documented = set(_OBJECT_ID.findall(html))

    def reference(match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        if not target.startswith("automr."):
            candidates = [name for name in documented if name.endswith(f".{target}")]
            if len(candidates) == 1:
                target = candidates[0]
        return f'<autoref identifier="{target}" optional><code>{shown}</code></autoref>'

    return _LITERAL_MARKER.sub(":</p>", _ROLE.sub(reference, html))
