"""An evaluation folder (``automr evaluate --out``): its layout, written and read in one place.

::

    results.md, results.json          the tables (means, intervals, paired differences)
    ranks/METHOD.json                 each method's per-sample ranks (a MetricReport)
    ranks/METHOD.settings.json        what decided those ranks (a rerun reuses equal ones)
    loglik/METHOD.json                each LM method's target log-likelihoods (--measures
                                      likelihood)
    loglik/METHOD.settings.json       what decided them
    KIND/METHOD.json                  per-sample details of the ranking: retrieved/ (memory
                                      elements), contexts/ (ReLLa/TRSR prompt contexts),
                                      generated/ (the title an L2 grounding generated)
    KIND/METHOD.loglik.json           the same of the likelihood measure (its own samples and
                                      settings; no generated/: it generates nothing)
    ranks/METHOD.shards/shard-N.json  while a method runs: each finished shard of samples
    loglik/METHOD.shards/shard-N.json (values and details), so a cut run resumes per shard
                                      (removed once the method's values are saved)

``METHOD`` is the method's name with ``:`` written ``-`` (``bigrec:l2`` -> ``bigrec-l2``).
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, TypeGuard, TypeVar

import attrs
import torch

from automr.errors import AutomrError
from automr.evaluation.bootstrap import DEFAULT_RESAMPLES, Interval
from automr.evaluation.likelihood import LikelihoodReport
from automr.evaluation.metrics import DEFAULT_KS, per_sample_metrics
from automr.evaluation.report import MetricReport
from automr.storage import (
    RUNS_FILE,
    read_json,
    read_run_records,
    taking_turns,
    write_json_atomic,
    write_text_atomic,
)

Measured = TypeVar("Measured", MetricReport, LikelihoodReport)

TURNS_FILE = ".automr-turns"
"""The file runs of one folder lock in turn to write or read values with their settings."""
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
EXPORT_FORMAT = "automr.results-export/1"
RANKING_ONLY_DETAILS = ("generated",)
"""Details only a ranking makes: the likelihood measure scores the true title and generates
nothing, so its ``KIND/METHOD.loglik.json`` never holds them."""
REPORTS_BESIDE = ("rq3",)
"""Commands that write their report (and run record) into the evaluation folder they read,
without --out: none of them is behind the evaluation, so :meth:`EvaluationFolder.commands`
leaves their records out."""
RUNS_INSIDE = {"rq2": r"bigrec|automr-\d+|random-seed-\d+", "demo": r"results|likelihood"}
"""Commands whose ``--out`` holds evaluation folders they made, and those folders' names
(``automr rq2``'s ``OUT/bigrec``, ``OUT/automr-I``, ...; ``automr demo``'s ``OUT/results``,
``OUT/likelihood``): their run records, in the folder above, are behind each of those
(:meth:`EvaluationFolder.commands`)."""
VALUE_FOLDERS = ("ranks", "loglik", "models")
"""The folders of values and models; every other folder holds a kind of details."""
EVALUATION_KEYS = ("method", "samples", "n_items")
"""What an evaluation adds to every method's settings (its name and the samples measured)."""


@attrs.frozen
class EvaluationFolder:
    """The files of one evaluation, by method name."""

    path: Path = attrs.field(converter=Path)

    def check_target(self) -> None:
        """Refuse a file, or a folder that holds something and is not an evaluation (another
        artifact's would get ranks/ and results mixed in). A new or empty folder is fine, and
        an evaluation folder (its ranks/, loglik/ or results.json; reports such as rq3's may
        sit beside them) is resumed."""
        if self.path.exists() and not self.path.is_dir():
            raise AutomrError(f"{self.path} is a file; write the evaluation into a new or empty "
                              f"folder")
        above = next((p for p in self.path.parents if p.exists()), None)
        if above is not None and not above.is_dir():  # its first write, after a whole shard
            raise AutomrError(f"cannot use {self.path}: {above} is a file, not a folder")
        if not self.path.is_dir() or self.is_evaluation():
            return
        other = sorted(p.name for p in self.path.iterdir()
                       if p.name != RUNS_FILE and not p.name.startswith("."))
        if other:
            raise AutomrError(f"{self.path} holds other files ({', '.join(other[:4])}) and is "
                              f"not an evaluation folder; write the evaluation into a new or "
                              f"empty folder (or an evaluation folder, to resume it)")

    def is_evaluation(self) -> bool:
        """Whether the folder holds an evaluation's files (its ranks/, loglik/, models/ or
        results.json)."""
        return any((self.path / name).exists()
                   for name in (*VALUE_FOLDERS, RESULTS_JSON))

    def is_combination(self) -> bool:
        """Whether `automr compare` wrote the folder: a method's settings say where it was
        brought in from (results.json's keys do not tell: evaluate's ``record`` is the
        caller's)."""
        return any(_brought_in(file) for kind in ("ranks", "loglik")
                   for file in (self.path / kind).glob("*.settings.json"))

    def check_not_combination(self) -> None:
        """Refuse a folder `automr compare` wrote: an evaluation into it would measure its
        brought-in methods again there, in place of their links to the folders measured."""
        if self.is_combination():
            raise AutomrError(f"{self.path} is a comparison written by `automr compare` (its "
                              f"methods are brought in from the folders where they were "
                              f"measured): evaluate into one of those folders or a new one, "
                              f"then run `automr compare` again")

    @staticmethod
    def slug(method: str) -> str:
        """``method`` as it names the folder's files: each ``:`` written ``-``."""
        return method.replace(":", "-")

    def ranks_file(self, method: str, kind: str = "ranks") -> Path:
        """``KIND/METHOD.json``: ``method``'s ranks (``kind="ranks"``) or target
        log-likelihoods (``kind="loglik"``)."""
        return self.path / kind / f"{self.slug(method)}.json"

    def settings_file(self, method: str, kind: str = "ranks") -> Path:
        """``KIND/METHOD.settings.json``: the settings ``method``'s ranks or log-likelihoods
        were made with (written last, so it marks them complete)."""
        return self.path / kind / f"{self.slug(method)}.settings.json"

    def details_file(self, kind: str, method: str, measure: str = "ranks") -> Path:
        """Where ``method``'s details of ``kind`` (``retrieved``, ...) made while measuring
        ``measure`` (``ranks`` or ``loglik``) are; for the likelihood measure of a folder
        written before the measures had files of their own, the one file they shared when it
        is that measure's (:meth:`_older_is_likelihoods`)."""
        own = self._details_file(kind, method, measure)
        if (measure == "loglik" and kind not in RANKING_ONLY_DETAILS and not own.is_file()
                and self._older_is_likelihoods(kind, method)):
            return self._details_file(kind, method, "ranks")
        return own

    def _details_file(self, kind: str, method: str, measure: str) -> Path:
        suffix = ".loglik.json" if measure == "loglik" else ".json"
        return self.path / kind / f"{self.slug(method)}{suffix}"

    def _older_is_likelihoods(self, kind: str, method: str) -> bool:
        """Older versions kept one ``KIND/METHOD.json`` for both measures, written by the one
        that ran last. It is the likelihood measure's when that measure alone was saved, or
        when both were saved by one evaluation with the same settings and samples (so both
        retrieved the same elements)."""
        shared = self._details_file(kind, method, "ranks")
        if not (shared.is_file() and self.ranks_file(method, "loglik").is_file()):
            return False
        if not self.ranks_file(method).is_file():
            return True
        settings = [self.settings_file(method, measure) for measure in ("ranks", "loglik")]
        if not all(path.is_file() for path in settings):
            return False
        ranks, loglik = (_read(path) for path in settings)
        return isinstance(ranks, dict) and "samples" in ranks and ranks == loglik

    def model_dir(self, name: str, key: Mapping[str, Any]) -> Path:
        """``models/NAME-DIGEST/``: a model the methods train themselves (SASRec), kept for a
        resume; DIGEST, of ``key`` (what it was trained on and with), tells trainings apart."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self._check_no_links("models", Path("models") / f"{name}-{digest}")
        return self.path / "models" / f"{name}-{digest}"

    def shard_file(self, method: str, number: int, kind: str = "ranks") -> Path:
        """``KIND/METHOD.shards/shard-NNNNN.json``: shard ``number`` of ``method``'s values
        (number zero-padded to five digits)."""
        return self.path / kind / f"{self.slug(method)}.shards" / f"shard-{number:05d}.json"

    def saved_shard(self, method: str, number: int, key: Mapping[str, Any],
                    kind: str = "ranks") -> dict[str, Any] | None:
        """Shard ``number`` of ``method``'s values if it was made under ``key`` (the
        settings' digest and the shard's sample ids), else None."""
        path = self.shard_file(method, number, kind)
        if not path.is_file():
            return None
        data = _read(path)
        if not isinstance(data, dict) or data.get("key") != json.loads(json.dumps(key)):
            return None
        values, details = data.get("values"), data.get("details")
        if not (isinstance(values, list) and len(values) == len(key["samples"])
                and isinstance(details, dict)):
            return None  # damaged (cut short, edited): computed again
        return data

    def save_shard(self, method: str, number: int, key: Mapping[str, Any],
                   values: list[Any], details: Mapping[str, Any], kind: str = "ranks") -> None:
        """Write shard ``number`` of ``method``'s values and details atomically, under ``key``
        (what :meth:`saved_shard` checks before reusing it)."""
        shards = self.shard_file(method, number, kind).parent
        self._check_no_links(kind, shards.relative_to(self.path))
        write_json_atomic(self.shard_file(method, number, kind),
                          {"key": dict(key), "values": values, "details": dict(details)},
                          indent=None)

    def clear_shards(self, method: str, kind: str = "ranks") -> None:
        """Remove ``method``'s shard files (its values are saved whole)."""
        shards = self.shard_file(method, 0, kind).parent
        self._check_no_links(kind, shards.relative_to(self.path))
        shutil.rmtree(shards, ignore_errors=True)

    def saved_report(self, method: str, settings: Mapping[str, Any]) -> MetricReport | None:
        """``method``'s saved report if it was ranked with exactly ``settings``, else None."""
        return self._saved(method, "ranks", settings, MetricReport.load)

    def saved_likelihoods(self, method: str, settings: Mapping[str, Any]
                          ) -> LikelihoodReport | None:
        """``method``'s saved target log-likelihoods if made with exactly ``settings``."""
        return self._saved(method, "loglik", settings, LikelihoodReport.load)

    def saved_note(self, method: str, settings: Mapping[str, Any],
                   note: str) -> dict[str, Any] | None:
        """The note ``note`` (``grounding``: a tuned gamma) that ``method``'s ranks saved
        here under ``settings`` were made with: of its finished ranks, else of a cut run's
        shards; None where none is saved. A resumed run takes it, so its samples are all
        ranked with one gamma (tuned again, it may differ: bfloat16 rounds otherwise in
        other batches)."""
        saved = self.settings_file(method)
        if saved.is_file() and self.details_file(note, method).is_file():
            with self._turn():
                if comparable_settings(_read(saved)) == comparable_settings(settings):
                    return self.details(note, method)
        digest = settings_digest(settings)
        for path in sorted(self.shard_file(method, 0).parent.glob("shard-*.json")):
            data = _read(path)
            if not (isinstance(data, dict) and isinstance(data.get("key"), dict)
                    and data["key"].get("settings") == digest):
                continue  # another run's settings
            details = data.get("details")
            found = details.get(note) if isinstance(details, dict) else None
            if isinstance(found, dict):
                return found
        return None

    def _saved(self, method: str, kind: str, settings: Mapping[str, Any],
               load: Callable[[Path], Any]) -> Any:
        values, saved = self.ranks_file(method, kind), self.settings_file(method, kind)
        if not values.exists() or not saved.exists():
            return None
        with self._turn():  # not between another run's values and its settings
            if not saved.exists() or \
                    comparable_settings(_read(saved)) != comparable_settings(settings):
                return None
            return _read(values, load)

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        """One process at a time writes or reads a method's values with their settings: two
        runs of one folder at once (other settings) left one's values under the other's
        settings, which a rerun with those settings then read back."""
        return taking_turns(self.path / TURNS_FILE)

    def save_likelihoods(self, report: LikelihoodReport, settings: Mapping[str, Any],
                         details: Mapping[str, Mapping[str, Any]] | None = {}) -> None:
        """Write a method's log-likelihoods, its details (e.g. the retrieved elements), then
        its settings (last: they mark it done); ``details`` as in :meth:`save`."""
        self._save(report, "loglik", settings, details)

    def save(self, report: MetricReport, settings: Mapping[str, Any],
             details: Mapping[str, Mapping[str, Any]] | None = {}) -> None:
        """Write a method's ranks, its details, then its settings (last: they mark it done).
        The details replace all those the method saved for this measure before (a kind it has
        no more is removed); ``None`` keeps them (the same values summarised again)."""
        self._save(report, "ranks", settings, details)

    def _save(self, report: MetricReport | LikelihoodReport, kind: str,
              settings: Mapping[str, Any],
              details: Mapping[str, Mapping[str, Any]] | None) -> None:
        self._check_no_links(kind, *(details or {}))
        with self._turn():
            if details is None:  # the values read back, summarised again: still these?
                self._check_still_saved(report.method, kind, settings)
            stale = [] if details is None else [detail for detail in self._detail_kinds(
                report.method, kind) if detail not in details]
            for detail in [*(details or {}), *stale] if kind == "ranks" else ():  # an older
                own = self._details_file(detail, report.method, "loglik")  # folder's
                if detail not in RANKING_ONLY_DETAILS and not own.is_file() and \
                        self._older_is_likelihoods(detail, report.method):  # likelihood
                    write_text_atomic(own, self._details_file(detail, report.method, "ranks")
                                      .read_text(encoding="utf-8"))
            done = self.settings_file(report.method, kind)
            done.unlink(missing_ok=True)  # a cut write must not pass for the older settings'
            report.save(self.ranks_file(report.method, kind))
            for detail in stale:  # another run's: they would be read as these values' details
                self._details_file(detail, report.method, kind).unlink()
            for detail, values in (details or {}).items():
                write_json_atomic(self._details_file(detail, report.method, kind),
                                  dict(values), indent=0)
            write_json_atomic(done, dict(settings), indent=None)

    def _check_no_links(self, *subfolders: str | Path) -> None:
        """Refuse to write where one of ``subfolders`` (relative to the folder) is a link: a
        received folder could send the write anywhere."""
        for sub in subfolders:
            if (self.path / sub).is_symlink():
                raise AutomrError(f"{self.path / sub} is a link: automr writes {sub} of "
                                  f"{self.path} there and follows no link; remove it")

    def _check_still_saved(self, method: str, kind: str, settings: Mapping[str, Any]) -> None:
        """Refuse to save values read back (their details kept) once another run has saved
        the method with other settings since: its details would stand beside these values."""
        saved = self.settings_file(method, kind)
        if not saved.is_file() or comparable_settings(_read(saved)) != comparable_settings(
                settings):
            raise AutomrError(f"{method}'s {kind} in {self.path} were saved by another run "
                              f"with other settings while this one ran; run one at a time, "
                              f"then rerun this one")

    def remove(self, method: str, kind: str = "ranks") -> None:
        """Remove ``method``'s values of ``kind`` (``ranks`` or ``loglik``), their settings
        (first: the values are no longer marked done) and their details."""
        self._check_no_links(kind, *self._detail_kinds(method, kind))  # the user's, through one
        self.settings_file(method, kind).unlink(missing_ok=True)
        self.ranks_file(method, kind).unlink(missing_ok=True)
        for detail in self._detail_kinds(method, kind):
            self._details_file(detail, method, kind).unlink()

    def _detail_kinds(self, method: str, measure: str) -> list[str]:
        """The kinds of detail ``method`` has saved here while measuring ``measure``."""
        if not self.path.is_dir():
            return []
        return sorted(path.name for path in self.path.iterdir() if path.is_dir()
                      and path.name not in VALUE_FOLDERS
                      and self._details_file(path.name, method, measure).is_file())

    @classmethod
    def check_names(cls, methods: Sequence[str]) -> None:
        """Refuse names that cannot name a file of the folder (empty, hidden, a path: they
        would be written elsewhere) or would share files (``a:b`` and ``a-b`` are both
        ``a-b``; ``Pop`` and ``pop`` are one file on macOS and Windows)."""
        owners: dict[str, str] = {}
        for method in methods:
            if (not isinstance(method, str) or not method.strip() or method.startswith(".")
                    or "/" in method or "\\" in method):
                raise AutomrError(f"the method name {method!r} cannot name the files of an "
                                  f"evaluation folder (ranks/NAME.json): give a name without "
                                  f"'/' or '\\' that does not start with '.'")
            other = owners.setdefault(
                unicodedata.normalize("NFC", cls.slug(method)).casefold(), method)
            if other != method:
                raise AutomrError(f"the methods {other!r} and {method!r} would share the files "
                                  f"{cls.slug(method)}.json of an evaluation folder; rename one")

    @staticmethod
    def check_detail_kinds(method: str, kinds: Collection[str]) -> None:
        """Refuse kinds of detail that cannot name a folder of their own here (a path, a dot,
        or a folder of values: kind ``ranks`` would be written over the ranks)."""
        for kind in kinds:
            if not isinstance(kind, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", kind) or \
                    kind in VALUE_FOLDERS:
                raise AutomrError(f"the details of {method} have kind {kind!r}, which cannot "
                                  f"name their folder (KIND/METHOD.json): give letters, digits, "
                                  f"'-' or '_', not {', '.join(VALUE_FOLDERS)}")

    def report(self, method: str) -> MetricReport:
        """The saved ranks of ``method``; a clear error if it was not evaluated here."""
        path = self.ranks_file(method)
        if not path.is_file():
            raise AutomrError(f"{self.path} holds no ranks of {method} ({path} is missing); "
                              f"evaluate it with {self.evaluate_command(method, 'ranks')}")
        return self._named(path, method, _read(path, MetricReport.load))

    def evaluate_command(self, method: str, measure: str) -> str:
        """How to add ``method``'s ``measure`` (``ranks`` or ``likelihood``) here: the
        ``automr evaluate`` command into this folder (with ranks beside likelihood for a method
        that decodes, ``KIND:G``, which evaluate measures no other way), naming the folder's
        other methods and measures too so that its table keeps them; in a folder of `automr
        compare`, where the values are measured, then compare again."""
        if self.is_combination():
            return (f"`automr evaluate --methods {method}` where the values {self.path} brings "
                    f"in are measured, then `automr compare` again (this folder is compare's)")
        decodes = ":" in method and not method.endswith(":likelihood")
        measures = ("" if measure == "ranks" else " --measures ranks,likelihood" if decodes
                    else " --measures likelihood")
        return (f"`automr evaluate --methods {method}{measures} --out {self.path} ...`, naming "
                f"the folder's other methods and measures too (its table lists those named)")

    def _named(self, path: Path, method: str, report: Measured) -> Measured:
        """``report`` read from ``path``, refused where it holds another method's values (a
        name that differs only in case is the same file on macOS and Windows)."""
        if report.method != method:
            raise AutomrError(f"{path} holds the values of {report.method!r}, not of "
                              f"{method!r} (file names that differ only in case are one file "
                              f"on this system)")
        return report

    def likelihoods(self, method: str) -> LikelihoodReport:
        """The saved target log-likelihoods of ``method``; a clear error if it has none here."""
        path = self.ranks_file(method, "loglik")
        if not path.is_file():
            raise AutomrError(f"{self.path} holds no target log-likelihoods of {method} ({path} "
                              f"is missing); evaluate it with "
                              f"{self.evaluate_command(method, 'likelihood')}")
        return self._named(path, method, _read(path, LikelihoodReport.load))

    def details(self, kind: str, method: str, measure: str = "ranks") -> dict[str, Any]:
        """``{sample id: value}`` of one kind of detail (e.g. ``retrieved``) of ``method``,
        made while measuring ``measure`` (``ranks`` or ``loglik``)."""
        path = self.details_file(kind, method, measure)
        again = (f"delete {self.settings_file(method, measure)} and run the evaluation again "
                 f"with this version of automr (a rerun reuses {method}'s saved values, and "
                 f"writes its details only when it measures it again)")
        if not path.is_file():
            raise AutomrError(f"{path} is missing: {self.path} has no record of the {kind} of "
                              f"{method}; {again}")
        try:
            values = read_json(path, "`automr evaluate`")
        except AutomrError as error:
            values = error
        if not isinstance(values, dict):
            raise AutomrError(f"{path} is damaged (not a JSON object of the {kind} of "
                              f"{method}); {again}")
        return values

    def generations(self, methods: Sequence[str], settings: Mapping[str, Any],
                    ignore: Collection[str] = ()) -> dict[str, dict[str, Any]]:
        """What L2 groundings saved here that is still theirs: per detail kind (``generated``,
        ``retrieved``, ``contexts``), ``{sample id: value}`` merged over those of ``methods``
        that saved generated titles with ``settings`` (keys in ``ignore``, and the samples and
        name that every method's settings add, aside). A method's
        :meth:`~automr.methods.GenerativeMethod.keep` takes it, so that an injection added later
        measures the kept titles instead of generating them again."""
        ignore = {*ignore, *EVALUATION_KEYS}

        def decisive(values: Mapping[str, Any]) -> dict[str, Any]:
            return json.loads(json.dumps({k: v for k, v in values.items() if k not in ignore}))

        wanted = decisive(settings)
        kept: dict[str, dict[str, Any]] = {}
        for method in methods:
            saved = self.settings_file(method)
            if not (saved.is_file() and self.details_file("generated", method).is_file()):
                continue
            with self._turn():  # the settings and the details of one run
                made = _read(saved) if saved.is_file() else None
                if not isinstance(made, dict) or decisive(made) != wanted:  # valid JSON, not
                    continue  # settings: not these (the method is measured again)
                for kind in ("generated", "retrieved", "contexts"):
                    if self.details_file(kind, method).is_file():
                        kept.setdefault(kind, {}).update(self.details(kind, method))
        return kept

    def source_record(self, source: Path | str, method: str) -> dict[str, str]:
        """The settings of a method `automr compare` brings in from ``source`` (a folder or an
        export): its path relative to this folder, with ``/`` on every system, so that the
        folder reads it back from any working directory (and on another system); an absolute
        one where there is no relative path (another drive on Windows)."""
        try:
            where = os.path.relpath(Path(source).resolve(), self.path.resolve())
        except ValueError:
            return {"folder": Path(source).resolve().as_posix(), "method": method}
        return {"folder": PurePath(where).as_posix(), "method": method,
                "relative_to": "this folder"}

    def source(self, settings: object) -> tuple[Path, str] | None:
        """Where a method `automr compare` brought in comes from (its folder or export, and
        its name there), from its settings; None for a method measured here. A missing source
        is an error: its commands and split would be left out silently."""
        if not _is_source_record(settings):
            return None
        path = Path(settings["folder"])
        if "relative_to" in settings:
            path = self.path / path
        if not (path.is_dir() or path.is_file()):
            where = ("" if "relative_to" in settings else " (recorded relative to the "
                     "directory `automr compare` ran in: run this there)")
            raise AutomrError(f"{path}, the source of {settings['method']} in {self.path}, is "
                              f"missing{where}")
        return path, str(settings["method"])

    def chain(self, method: str, kind: str = "ranks") -> list[tuple[Path, str]]:
        """``(folder or export, method)`` from this folder's ``method`` to where its ranks
        (``kind="loglik"``: its log-likelihoods) were measured, following what `automr
        compare` brought in (resolved paths; the first is this folder's). Sources that lead
        back to one another are an error."""
        chain = [(self.path.resolve(), method)]
        while chain[-1][0].is_dir():
            folder = EvaluationFolder(chain[-1][0])
            settings = folder.settings_file(chain[-1][1], kind)
            brought = folder.source(_read(settings)) if settings.is_file() else None
            if brought is None:
                break
            step = (brought[0].resolve(), brought[1])
            if step in chain:
                raise AutomrError(
                    f"{method} in {self.path} is brought in from sources that lead back to "
                    f"one another ({' <- '.join(f'{p}/{m}' for p, m in [*chain, step])}): "
                    f"combine it again from the folder where it was measured")
            chain.append(step)
        return chain

    def split(self, method: str) -> str:
        """The split that was ranked (:meth:`setting`; test)."""
        return str(self.setting(method, "split", "test"))

    def setting(self, method: str, key: str, default: Any = None) -> Any:
        """The setting ``key`` that ``method`` was measured with (from its settings or
        ``results.json``'s config, or, for a method `automr compare` brought in, from its
        source; one measured by log-likelihoods only, from theirs); ``default`` where none is
        recorded."""
        kind = "ranks" if self.settings_file(method).is_file() or not self.settings_file(
            method, "loglik").is_file() else "loglik"
        where, name = self.chain(method, kind)[-1]
        if where.is_file():
            return open_evaluation(where).setting(name, key, default)
        folder = EvaluationFolder(where)
        settings = folder.settings_file(name, kind)
        for path, section in ((settings, None), (folder.path / RESULTS_JSON, "config")):
            if path.is_file():
                data = _read(path)
                data = data.get(section, {}) if section else data
                if key in data:
                    return data[key]
        return default

    def export(self) -> dict[str, Any]:
        """Everything needed to recompute every number of ``results.json``, in one JSON-able
        dict: the tables, each method's per-sample ranks and target log-likelihoods keyed by
        sample id, the memory elements each memory method retrieved (``retrieved``: method ->
        sample id -> timeline positions), what a grounder chose on validation samples
        (``grounding``: method -> e.g. its gamma and the grid it was chosen on), the title each
        L2 grounding generated (``generated``: method -> sample id -> text; with a prior, also
        for the validation samples its weight was tuned on), the elements a
        method with both measures retrieved while scoring likelihoods (``retrieved_loglik``),
        and the commands that wrote the folder (its run records)."""
        results = _read(self.path / RESULTS_JSON)
        if not (isinstance(results, dict) and isinstance(results.get("methods"), dict)
                and isinstance(results.get("likelihood", {}), dict)):
            raise AutomrError(f"{self.path / RESULTS_JSON} is damaged (not the results of "
                              f"`automr evaluate`): delete it and run the evaluation again "
                              f"(which writes it anew from the saved values)")
        ranks, loglik = {}, {}
        for method, table in results["methods"].items():
            report = self.report(method)
            self._check_table(method, table, report, "ranks")
            ranks[method] = dict(zip(report.sample_ids, report.ranks, strict=True))
        for method, table in results.get("likelihood", {}).items():
            report = _read(self.ranks_file(method, "loglik"), LikelihoodReport.load)
            self._check_table(method, table, report, "loglik")
            loglik[method] = {s: [v, n] for s, v, n in zip(
                report.sample_ids, report.log_likelihoods, report.tokens, strict=True)}
        commands = self.commands()
        measured = {m: "ranks" for m in ranks}  # a ranked method's details: its ranking's
        measured.update({m: "loglik" for m in loglik if m not in ranks})
        details = {kind: {m: self.details(kind, m, measure) for m, measure in measured.items()
                          if self.details_file(kind, m, measure).is_file()}
                   for kind in ("retrieved", "grounding", "generated")}
        details["retrieved_loglik"] = {  # of methods with both measures: the likelihood's own
            m: self.details("retrieved", m, "loglik") for m in loglik
            if m in ranks and self.details_file("retrieved", m, "loglik").is_file()}
        return {"format": EXPORT_FORMAT, "commands": commands, "results": results,
                "n_items": next(iter(self.report(m).n_items for m in results["methods"]), None),
                "ranks": ranks, "loglik": loglik, **details}

    def _check_table(self, method: str, table: Any,
                     report: MetricReport | LikelihoodReport, kind: str) -> None:
        """Refuse a ``results.json`` whose table of ``method`` is not that of its values now
        saved (a later evaluation into the folder replaced them and was cut before its
        tables): the export would hold numbers its per-sample values contradict."""
        if table != json.loads(json.dumps({k: attrs.asdict(v)
                                           for k, v in report.metrics.items()})):
            raise AutomrError(
                f"{self.path / RESULTS_JSON} does not hold the table of the values now saved "
                f"in {self.ranks_file(method, kind)} (a later evaluation into {self.path} "
                f"replaced them and did not finish): run that evaluation again to its end (it "
                f"reads back what it saved), then export")

    def commands(self) -> list[list[str]]:
        """The argv of every command behind this folder, each once, oldest first: for a method
        that ``automr compare`` brought in, the commands behind its source (a folder, through
        its own :meth:`commands`, or an export's ``commands``); then the run records of a
        command of :data:`RUNS_INSIDE` in the folder above that makes a folder of this name
        (``rq2``, ``demo``) and the folder's own (but those of :data:`REPORTS_BESIDE`)."""
        return self._commands(set())

    def _commands(self, seen: set[Path]) -> list[list[str]]:
        """:meth:`commands`, leaving out the folders in ``seen`` (their commands are in)."""
        found: list[list[str]] = []
        seen.add(self.path.resolve())
        for path in sorted(self.path.glob("*/*.settings.json")):
            brought = self.source(_read(path))
            if brought is None or brought[0].resolve() in seen:
                continue
            source = brought[0]
            found += (read_export(source)["commands"] if source.is_file()
                      else EvaluationFolder(source)._commands(seen))
        found += [record["argv"] for record in read_run_records(self.path.parent)
                  if re.fullmatch(RUNS_INSIDE.get(_command_name(record), "(?!)"),
                                  self.path.name)]
        found += [record["argv"] for record in read_run_records(self.path)
                  if _command_name(record) not in REPORTS_BESIDE]
        return [list(argv) for argv in dict.fromkeys(tuple(argv) for argv in found)]

    def write_results(self, payload: Mapping[str, Any], markdown: str) -> None:
        """Write the tables: ``payload`` to ``results.json`` (atomically) and ``markdown`` to
        ``results.md``."""
        write_json_atomic(self.path / RESULTS_JSON, dict(payload), indent=2)
        write_text_atomic(self.path / RESULTS_MD, markdown)


def _command_name(record: Mapping[str, Any]) -> str:
    """The sub-command a run record names (``rq2`` of ``automr rq2``)."""
    return str(record.get("command", "")).rpartition(" ")[2]


def evaluated_settings(settings: Mapping[str, Any], name: str, ids: Sequence[str],
                       n_items: int) -> dict[str, Any]:
    """A method's ``settings`` with what an evaluation adds (:data:`EVALUATION_KEYS`): its
    name, the ids of the samples measured and the catalog's size. Saved values are matched
    with them."""
    return {**settings, "method": name, "samples": list(ids), "n_items": n_items}


def settings_digest(settings: Mapping[str, Any]) -> str:
    """``settings`` hashed as reuse compares them (:func:`comparable_settings`): what a saved
    shard's key holds."""
    return hashlib.sha256(json.dumps(comparable_settings(settings), sort_keys=True,
                                     default=str).encode()).hexdigest()


def comparable_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as reuse compares them: without each path whose content digest lies
    beside it (``digests``), so a fine-tune, memory or retriever moved or copied elsewhere, or
    a model folder typed another way, is the same artifact. Saved settings keep the paths."""
    plain = json.loads(json.dumps(settings, default=str))
    digests = plain.get("digests") if isinstance(plain, dict) else None
    if not isinstance(digests, dict):
        return plain
    return {key: value for key, value in plain.items() if key not in digests}


def _is_source_record(settings: object) -> TypeGuard[dict[str, Any]]:
    """Whether a method's settings are :meth:`EvaluationFolder.source_record`'s."""
    return isinstance(settings, dict) and {"folder", "method"} <= set(settings) <= {
        "folder", "method", "relative_to"}


def _brought_in(settings_file: Path) -> bool:
    """Whether the method of ``settings_file`` was brought in by `automr compare` (a damaged
    file: not known to be)."""
    try:
        return _is_source_record(read_json(settings_file, "`automr evaluate`"))
    except AutomrError:
        return False


def _read(path: Path, load: Callable[[Path], Any] | None = None) -> Any:
    """``load(path)`` (default: its JSON) of a file of an evaluation folder; a damaged one is
    one line saying to delete it, as a rerun of the command that just failed cannot help."""
    try:
        return read_json(path, "`automr evaluate`") if load is None else load(path)
    except AutomrError as error:
        if not path.is_file():
            raise
        reason = str(error).split(";")[0]
        raise AutomrError(f"{reason}; it is damaged: delete it and run the evaluation again "
                          f"(which writes it anew)") from None


def read_export(path: Path | str) -> dict[str, Any]:
    """An :meth:`EvaluationFolder.export` written to ``path`` (e.g. under docs/results/)."""
    return read_json(path, "`automr export` (an exported evaluation)", EXPORT_FORMAT)


@attrs.frozen
class ExportedEvaluation:
    """An evaluation written to one JSON file (:meth:`EvaluationFolder.export`, e.g. under
    docs/results/), read as the folder it came from: its ranks, target log-likelihoods,
    details and split, for analyses such as RQ3 (not for resuming)."""

    path: Path
    exported: Mapping[str, Any]

    @classmethod
    def open(cls, path: Path | str) -> "ExportedEvaluation":
        """Read the export at ``path`` (:func:`read_export`: an
        :class:`~automr.errors.AutomrError` if it is not one)."""
        return cls(Path(path), read_export(path))

    def report(self, method: str) -> MetricReport:
        """``method``'s ranks, with the intervals its table reports; an
        :class:`~automr.errors.AutomrError` if the export holds none."""
        return self._measured(method, "ranks")

    def likelihoods(self, method: str) -> LikelihoodReport:
        """``method``'s target log-likelihoods, with the intervals its table reports; an
        :class:`~automr.errors.AutomrError` if the export holds none."""
        return self._measured(method, "loglik")

    def _measured(self, method: str, measure: str) -> Any:
        """``method``'s ranks (``ranks``) or target log-likelihoods (``loglik``)."""
        report, likelihoods = exported_reports(self.exported, method)
        values = report if measure == "ranks" else likelihoods
        if values is None:
            what = "ranks" if measure == "ranks" else "target log-likelihoods"
            raise AutomrError(f"{self.path} holds no {what} of {method} (there: "
                              f"{', '.join(self.exported[measure]) or 'none'})")
        return values

    def details(self, kind: str, method: str, measure: str = "ranks") -> dict[str, Any]:
        """As :meth:`EvaluationFolder.details`: an export keeps a method's details of its
        ranking, or of its likelihoods when it was not ranked, and (``retrieved``) those of
        both when it was."""
        ranked = method in self.exported["ranks"]
        if kind == "retrieved" and measure == "loglik" and ranked:
            values = self.exported.get("retrieved_loglik", {}).get(method)
        elif measure == ("ranks" if ranked else "loglik"):
            values = self.exported.get(kind, {}).get(method)
        else:
            values = None
        if values is None:
            raise AutomrError(f"{self.path} has no record of the {kind} of {method} "
                              f"({measure})")
        return dict(values)

    def split(self, method: str) -> str:
        """The split the exported evaluation ranked (:meth:`setting`; test)."""
        return str(self.setting(method, "split", "test"))

    def setting(self, method: str, key: str, default: Any = None) -> Any:
        """The setting ``key`` of the exported evaluation (its ``results.json``'s config: the
        same for every ``method``, or, recorded by method as a combination records
        ``exclude_seen``, ``method``'s); ``default`` where none is recorded."""
        value = self.exported["results"].get("config", {}).get(key, default)
        return value.get(method, default) if isinstance(value, dict) else value


def open_evaluation(path: Path | str) -> "EvaluationFolder | ExportedEvaluation":
    """An evaluation to read: a folder (``automr evaluate --out``) or its export (a file)."""
    if not Path(path).exists():
        raise AutomrError(f"{path} does not exist: an evaluation to read is a folder "
                          f"(automr evaluate --out) or its export (automr export)")
    if Path(path).is_file():
        return ExportedEvaluation.open(path)
    folder = EvaluationFolder(path)
    if not folder.is_evaluation():
        raise AutomrError(f"{path} is not an evaluation folder (no ranks/, loglik/ or "
                          f"{RESULTS_JSON}): pass the --out of `automr evaluate` or its export "
                          f"(automr export)")
    return folder


def exported_reports(exported: Mapping[str, Any], method: str
                     ) -> tuple[MetricReport | None, LikelihoodReport | None]:
    """``method``'s ranks and target log-likelihoods (None where it has none) rebuilt from an
    export: its per-sample values with the intervals its table reports."""
    results = exported["results"]
    config = results.get("config", {})
    kept = {"n_resamples": int(config.get("n_resamples", DEFAULT_RESAMPLES)),
            "seed": int(config.get("seed", 0)),
            "resample": str(config.get("resample", "samples"))}  # before it: samples
    report = likelihoods = None
    if method in exported["ranks"]:
        ranks = exported["ranks"][method]
        report = MetricReport(
            method=method, n_items=int(exported["n_items"]),
            ks=tuple(config.get("ks", DEFAULT_KS)), sample_ids=tuple(ranks),
            ranks=tuple(int(r) for r in ranks.values()),
            metrics=_intervals(results["methods"][method]), **kept)
    if method in exported["loglik"]:
        pairs = exported["loglik"][method]
        likelihoods = LikelihoodReport(
            method=method, sample_ids=tuple(pairs),
            log_likelihoods=tuple(float(v) for v, _ in pairs.values()),
            tokens=tuple(int(n) for _, n in pairs.values()),
            metrics=_intervals(results["likelihood"][method]), **kept)
    return report, likelihoods


def _intervals(table: Mapping[str, Mapping[str, float]]) -> dict[str, Interval]:
    return {metric: Interval(**interval) for metric, interval in table.items()}


def recomputed_means(exported: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Every table mean of an :meth:`EvaluationFolder.export`, recomputed from its per-sample
    values alone (ranks -> Recall/NDCG@K; log-likelihoods -> per sample and per token)."""
    means: dict[str, dict[str, float]] = {}
    ks = tuple(exported["results"].get("config", {}).get("ks", DEFAULT_KS))
    for method, ranks in exported["ranks"].items():
        values = per_sample_metrics(torch.tensor(list(ranks.values())), ks,
                                    exported.get("n_items"))
        means[method] = {k: float(v.double().mean()) for k, v in values.items()}
    for method, pairs in exported["loglik"].items():
        ll = torch.tensor([v for v, _ in pairs.values()], dtype=torch.float64)
        tokens = torch.tensor([n for _, n in pairs.values()], dtype=torch.float64)
        means.setdefault(method, {}).update(target_ll=float(ll.mean()),
                                            target_ll_per_token=float((ll / tokens).mean()))
    return means
