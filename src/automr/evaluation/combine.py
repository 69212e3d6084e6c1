"""Methods from several evaluation folders side by side, paired by sample id.

Two runs of ``automr evaluate`` on the same seeded samples (two fine-tuned recommenders, say,
which one run cannot hold) are compared from what they saved, with nothing recomputed::

    evaluation = combine_folders({"frozen": ("runs/a", "bigrec:likelihood"),
                                  "memory-aware": ("runs/b", "bigrec:likelihood")},
                                 out="runs/a-vs-b")
    print(evaluation.markdown())

A source may also be an exported evaluation (the JSON files under docs/results/, written by
:meth:`~automr.evaluation.folder.EvaluationFolder.export`): a new method is paired with a
committed table's methods on the same seeded samples without rerunning them.

``out`` becomes an evaluation folder of its own (the methods under their new names, with their
retrieved elements), so :meth:`~automr.evaluation.folder.EvaluationFolder.export` works on it.
A combination written there before is replaced (the methods and measures it has no more are
removed); it may be a source itself (summarised again, e.g. resampling users): its methods keep
the sources it recorded.
"""

from collections.abc import Mapping
from pathlib import Path

import attrs

from automr.checks import require_int
from automr.errors import AutomrError
from automr.evaluation.bootstrap import DEFAULT_RESAMPLES, check_resample, check_seed
from automr.evaluation.folder import (
    EvaluationFolder,
    exported_reports,
    open_evaluation,
    read_export,
)
from automr.evaluation.likelihood import LikelihoodReport
from automr.evaluation.report import MetricReport
from automr.evaluation.run import Evaluation
from automr.storage import read_json


def combine_folders(
    sources: Mapping[str, tuple[Path | str, str]], *, out: Path | str | None = None,
    reference: str | None = None, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    resample: str = "samples",
) -> Evaluation:
    """``{name: (evaluation folder or exported .json, method in it)}`` -> one
    :class:`Evaluation`, each method paired with ``reference`` (default: the first name).

    Every method brings its ranks and/or its target log-likelihoods, whichever its source
    holds; all methods of a measure must cover the same samples (same ids; otherwise an
    :class:`~automr.errors.AutomrError`, not an intersection), so pairs are exact, and all
    ranks must be measured at the same cut-offs over the same catalog. ``out``: a new or
    empty folder, or one a combination wrote before (an ``automr evaluate`` folder is
    refused: its results would be replaced). ``n_resamples``, ``seed`` and ``resample``
    (``samples`` or ``users``): the bootstrap's, for every interval (a source saved with others
    is summarised again from its values)."""
    check_resample(resample)
    seed = check_seed(seed)
    n_resamples = require_int(n_resamples, "n_resamples", 1)
    if not sources:
        raise AutomrError("nothing to combine: give at least one NAME=FOLDER/METHOD")
    for name, source in sources.items():
        if not isinstance(name, str) or not isinstance(source, tuple | list) or len(source) != 2:
            raise AutomrError(f"combine_folders takes {{name: (folder, method)}} with str names; "
                              f"got {name!r}: {source!r}")
    reference = reference or next(iter(sources))
    if out is not None:
        _check_target(Path(out))
        EvaluationFolder.check_names(list(sources))
    if reference not in sources:
        raise AutomrError(f"the reference {reference!r} is none of {', '.join(sources)}")
    reports, likelihoods, retrieved = {}, {}, {}
    for name, (path, method) in sources.items():
        if not Path(path).exists():
            raise AutomrError(f"{path} does not exist (the source of {name}: an evaluation "
                              f"folder or an exported .json)")
        if out is not None:
            _check_not_circular(Path(out), name, Path(path), method)
        report, likelihood, elements = _saved(Path(path), method)
        if report is None and likelihood is None:
            whole = Path(path) / method  # NAME=FOLDER, the method left off
            if _held(Path(path)) == [] and whole.exists() and _held(whole):
                raise AutomrError(f"{whole} is an evaluation: name one of its methods, "
                                  f"{name}={whole}/METHOD (there: {', '.join(_held(whole))})")
            raise AutomrError(f"{path} holds neither ranks nor target log-likelihoods of "
                              f"{method} (there: {', '.join(_held(Path(path))) or 'none'})")
        if report is not None:  # one bootstrap for every interval of the table
            reports[name] = attrs.evolve(report.resampled(report.ks, n_resamples, seed,
                                                          resample=resample), method=name)
        if likelihood is not None:
            likelihoods[name] = attrs.evolve(likelihood.resampled(n_resamples, seed,
                                                                  resample=resample),
                                             method=name)
        retrieved[name] = elements
    for kind, measured in (("ranks", reports), ("log-likelihoods", likelihoods)):
        ids = {name: frozenset(report.sample_ids) for name, report in measured.items()}
        if len(set(ids.values())) > 1:
            sizes = ", ".join(f"{name}: {len(s)}" for name, s in ids.items())
            raise AutomrError(f"the {kind} cover different samples ({sizes} ids); evaluate "
                              f"them with the same --split, --samples and --seed")
    if len({r.n_items for r in reports.values()}) > 1:
        raise AutomrError("the ranks were made over catalogs of different sizes")
    if len({r.ks for r in reports.values()}) > 1:
        cutoffs = ", ".join(f"{name}: {list(r.ks)}" for name, r in reports.items())
        raise AutomrError(f"the ranks were measured at different cut-offs ({cutoffs})")
    _check_seen_alike({name: sources[name] for name in reports})
    samples = len(next(iter((reports or likelihoods).values())).sample_ids)
    evaluation = Evaluation(reports, reference, likelihoods, samples, n_resamples, seed,
                            resample=resample)
    if out is not None:
        _write(EvaluationFolder(out), evaluation, sources, retrieved)
    return evaluation


def _check_seen_alike(sources: Mapping[str, tuple[Path | str, str]]) -> None:
    """Refuse ranks made with and without ``--exclude-seen``: a method compared with itself
    would differ, significantly, by that rule alone. SASRec, which always excludes (beside
    methods that keep the history, as in one evaluation), and a source that records neither
    way are taken as they are."""
    rules = {name: rule for name, (path, method) in sources.items()
             if (rule := _seen_rule(Path(path), method)) is not None}
    if len(set(rules.values())) > 1:
        said = ", ".join(f"{name}: {'excluded' if rule else 'kept'}"
                         for name, rule in rules.items())
        raise AutomrError(f"the ranks were made with and without --exclude-seen (the history "
                          f"{said}): compare methods ranked alike")


def _seen_rule(path: Path, method: str) -> bool | None:
    """Whether ``method`` of ``path`` (a folder or an export) was ranked with the history
    left out, from where it was measured; None for SASRec and where nothing says."""
    where, measured = (EvaluationFolder(path).chain(method)[-1] if path.is_dir()
                       else (path, method))
    rule = open_evaluation(where).setting(measured, "exclude_seen")
    return rule if measured != "sasrec" and isinstance(rule, bool) else None


def _check_target(out: Path) -> None:
    """New, empty, or a combination written before: an ``automr evaluate`` folder would have
    its results replaced by the combination's (its methods gone from its table and export)."""
    folder = EvaluationFolder(out)
    folder.check_target()
    if any((out / name).exists() for name in ("ranks", "loglik")) and \
            not folder.is_combination():
        raise AutomrError(f"{out} holds an evaluation; its results would be replaced by the "
                          f"combination's: write it into a new folder")


def _saved(path: Path, method: str
           ) -> tuple[MetricReport | None, LikelihoodReport | None, dict[str, dict]]:
    """``method``'s ranks, log-likelihoods (None where missing) and retrieved elements per
    measure (``ranks``, ``loglik``; where recorded), from an evaluation folder or from an
    exported one (a ``.json`` file, e.g. under docs/results/)."""
    if path.is_file():
        exported = read_export(path)
        report, likelihood = exported_reports(exported, method)
        elements = exported.get("retrieved", {}).get(method)  # ranking's, else likelihood's
        retrieved = {} if elements is None else {
            "ranks" if report is not None else "loglik": elements}
        own = exported.get("retrieved_loglik", {}).get(method)  # exports from before: none
        return report, likelihood, retrieved | ({} if own is None else {"loglik": own})
    folder = EvaluationFolder(path)
    return (folder.report(method) if folder.ranks_file(method).is_file() else None,
            folder.likelihoods(method) if folder.ranks_file(method, "loglik").is_file()
            else None,
            {measure: folder.details("retrieved", method, measure)
             for measure in ("ranks", "loglik")
             if folder.details_file("retrieved", method, measure).is_file()})


def _check_not_circular(out: Path, name: str, path: Path, method: str) -> None:
    """Refuse to bring ``method`` of ``path`` into ``out`` as ``name`` where ``path`` brought it
    in from ``out``'s ``name`` itself: each would name the other as its source."""
    if not path.is_dir() or path.resolve() == out.resolve():
        return  # a combination summarised again records its own sources (_origin)
    for kind in ("ranks", "loglik"):  # a method brought in with log-likelihoods only, too
        chain = EvaluationFolder(path).chain(method, kind)
        if (out.resolve(), name) not in chain:
            continue
        where, measured = chain[-1]
        raise AutomrError(f"{path}/{method} was brought in from {out}/{name} itself (by "
                          f"`automr compare`): bring it in from where it was measured, "
                          f"{where}/{measured}")


def _held(path: Path) -> list[str]:
    """The methods an evaluation folder (or an export) holds ranks or log-likelihoods of."""
    if path.is_file():
        exported = read_export(path)
        return list(dict.fromkeys([*exported.get("ranks", {}), *exported.get("loglik", {})]))
    return list(dict.fromkeys([*_saved_methods(path, "ranks"), *_saved_methods(path, "loglik")]))


def _saved_methods(path: Path, kind: str) -> list[str]:
    """The methods a folder holds values of ``kind`` (``ranks`` or ``loglik``) of."""
    names = []
    for file in sorted((path / kind).glob("*.json")):
        if file.name.endswith(".settings.json"):
            continue
        try:  # a damaged file elsewhere in the folder must not hide a message
            saved = read_json(file, "automr evaluate")
        except AutomrError:
            continue
        if (isinstance(saved, dict) and isinstance(saved.get("method"), str)
                and file.name == f"{EvaluationFolder.slug(saved['method'])}.json"):
            names.append(saved["method"])  # a name that is not its file's would name others
    return names


def _origin(folder: EvaluationFolder, path: Path, method: str) -> dict:
    """What a combined method records as its source: ``path``, or, where ``path`` is the
    combination's own folder (summarised again), the source it recorded there (a record of
    itself would send its commands and split round in a circle)."""
    if path.resolve() == folder.path.resolve():
        for kind in ("ranks", "loglik"):
            settings = folder.settings_file(method, kind)
            if settings.is_file() and folder.source(recorded := read_json(settings)) is not None:
                return recorded
    return folder.source_record(path, method)


def _write(folder: EvaluationFolder, evaluation: Evaluation,
           sources: Mapping[str, tuple[Path | str, str]],
           retrieved: Mapping[str, Mapping[str, dict]]) -> None:
    origin = {name: _origin(folder, Path(path), method) for name, (path, method) in
              sources.items()}
    for kind, written in (("ranks", evaluation.reports), ("loglik", evaluation.likelihoods)):
        for method in _saved_methods(folder.path, kind):
            if method not in written:  # an earlier combination's: read back as this one's
                folder.remove(method, kind)

    def details(name: str, measure: str) -> dict:
        elements = retrieved[name].get(measure)
        return {} if elements is None else {"retrieved": elements}

    for name, report in evaluation.reports.items():
        folder.save(report, origin[name], details(name, "ranks"))
    for name, report in evaluation.likelihoods.items():
        folder.save_likelihoods(report, origin[name], details(name, "loglik"))
    ks = next((list(r.ks) for r in evaluation.reports.values()), [])
    splits = {folder.split(name) for name in (*evaluation.reports, *evaluation.likelihoods)}
    rules = {name: rule for name in evaluation.reports
             if (rule := _seen_rule(folder.path, name)) is not None}
    config = {"ks": ks, "n_resamples": evaluation.n_resamples, "seed": evaluation.seed,
              "resample": evaluation.resample,  # split and exclude_seen: read by its export
              **({"split": splits.pop()} if len(splits) == 1 else {}),
              **({"exclude_seen": rules} if rules else {})}
    folder.write_results(evaluation.to_json({"config": config, "sources": origin}),
                         evaluation.markdown())
