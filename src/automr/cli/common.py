"""Shared CLI plumbing: options every command takes and one-line user errors."""

import errno
import functools
import inspect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import attrs
import typer

from automr.distributed import MainProcessError
from automr.errors import AutomrError, WrongTypeError
from automr.paths import home_path
from automr.recommenders.finetune_config import FinetuneConfig
from automr.storage import partial_path, wrapped_errno

if TYPE_CHECKING:
    from automr.llm.loading import LoadedModel

P = ParamSpec("P")
R = TypeVar("R")

DeviceOption = Annotated[str, typer.Option(help="auto, cpu, mps or cuda[:N].")]
DtypeOption = Annotated[str, typer.Option(
    help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16.")]
ExactDtypeOption = Annotated[str, typer.Option(
    help="auto (float32 on every device: bfloat16 moves eq. 5's gains by 0.1 nats on average "
         "and changes the best element of 58% of the samples), float32, bfloat16, float16.")]
LayerOption = Annotated[int, typer.Option(
    help="Split layer L: memory keys and the states the combiner joins are layer-L states.")]
CombinerOption = Annotated[str, typer.Option(
    help="How memory joins the prompt: concat, append-token (shares the prompt's work) or "
         "prepend-token.")]
SplitOption = Annotated[str, typer.Option(help="Dataset split: train, valid or test.")]
SampleSeedOption = Annotated[int, typer.Option(help="Seed of the seeded sample subset.")]
QuietOption = Annotated[bool, typer.Option(help="No progress bars.")]
ModelOption = Annotated[str, typer.Option(
    help="Base model: the embedded name, a Hugging Face id or a folder.")]
DataOption = Annotated[Path, typer.Option(help="Prepared dataset folder.")]
MemoryOption = Annotated[Path, typer.Option(help="Memory folder (automr memory build).")]
FinetunedOption = Annotated[Path, typer.Option(help="Fine-tune run folder (automr finetune).")]
RetrieverOption = Annotated[Path, typer.Option(help="Trained retriever folder.")]
LabelFormOption = Annotated[str, typer.Option(
    help="Retriever labels: paper (softmax of probability differences, eq. 5) or log (of "
         "log-likelihood differences).")]
LabelTemperatureOption = Annotated[float, typer.Option(
    "--temperature", help="Label softmax temperature: S' = softmax(delta / temperature).")]
ResampleOption = Annotated[str, typer.Option(
    help="What the bootstrap of every interval draws: samples, or users (all of a drawn "
         "user's samples; samples of one user share their history).")]
DEFAULT_LORA_TARGETS = ",".join(attrs.fields(FinetuneConfig).target_modules.default)
LoraTargetsOption = Annotated[str, typer.Option(
    help="Comma-separated linear modules of each tuned layer that get LoRA (BIGRec's default; "
         "phi3 fuses them: qkv_proj; q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj: "
         "all of a Llama or Qwen layer's; multi-head latent attention (DeepSeek, GLM-4.7-Flash, "
         "MiniCPM3): q_b_proj,kv_b_proj, or q_proj,kv_b_proj without query compression; "
         "Mamba2: in_proj; Mamba and FalconMamba: in_proj,x_proj).")]

CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Folder for downloads and converted files "
        "[default: $AUTOMR_CACHE, else $XDG_CACHE_HOME/automr, else ~/.cache/automr].",
        show_default=False,
    ),
]


def command_group(help: str) -> typer.Typer:
    """A group of subcommands (``automr data``, ``automr bench``, ...), shown with its help
    when run with none."""
    return typer.Typer(help=help, no_args_is_help=True)


def comma_list(text: str) -> tuple[str, ...]:
    """The non-empty parts of a comma-separated option, stripped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_lora_targets(text: str) -> tuple[str, ...]:
    """The modules ``--lora-targets`` names (one line when it names none)."""
    targets = comma_list(text)
    if not targets:
        raise AutomrError(f"--lora-targets {text!r} names no module (BIGRec's: "
                          f"{DEFAULT_LORA_TARGETS})")
    return targets


def user_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn an :class:`AutomrError`, a write the disk refused (full, over quota, read-only), or
    a path that cannot be used (a file where a folder is needed, no permission, a folder that
    cannot be created where the command was told to write) into one line on stderr and exit
    code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except Exception as error:
            given = [v for v in kwargs.values() if isinstance(v, Path)]
            if isinstance(error, MainProcessError) and error.cause is not None:
                # under a launcher: the main process's error, worded as it words it
                line = disk_error(error.cause) or path_error(error.cause, given) or str(error)
            elif isinstance(error, AutomrError):
                line = str(error)
            else:
                line = disk_error(error) or path_error(error, given)
            if line is None:
                raise
            print_error(line)
            raise typer.Exit(code=2) from None

    return wrapper


def print_error(line: str) -> None:
    """``error: LINE`` on stderr, in red on a terminal unless ``NO_COLOR`` is set or
    ``TERM=dumb`` (no-color.org; rich's progress follows them, the error line did not)."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        typer.echo(f"error: {line}", err=True)
    else:
        typer.secho(f"error: {line}", err=True, fg=typer.colors.RED)


def expand_home(command: Any) -> None:
    """Make ``command`` (and every command under it) read a leading ``~`` in its path options
    as the home folder. A shell expands it only at the start of a word: ``--out=~/runs`` and
    a config file's ``out = "~/runs"`` arrive as typed, and were a folder named ``~`` in the
    current one for some commands, the home folder for others."""
    for sub in getattr(command, "commands", {}).values():
        expand_home(sub)
    if getattr(command, "commands", None) is not None:
        return
    invoke = command.invoke

    @functools.wraps(invoke)
    def expanded(ctx: Any) -> Any:
        paths = {param.name for param in ctx.command.params  # click's Path type or typer's
                 if getattr(getattr(param, "type", None), "name", None) == "path"}
        try:  # typer before 0.29 holds a Path option as the str typed until the command runs
            ctx.params = {name: _home_expanded(value, name in paths)
                          for name, value in ctx.params.items()}
        except AutomrError as error:  # before the command's own user_errors
            print_error(str(error))
            raise typer.Exit(code=2) from None
        return invoke(ctx)

    command.invoke = expanded


def _home_expanded(value: Any, path: bool) -> Any:
    """``value`` with a leading ``~`` read as the home folder where it is a path (a ``Path``,
    or a ``str`` of a ``path`` option), one by one in a list."""
    if isinstance(value, Path) or (path and isinstance(value, str)):
        try:
            str(value).encode("utf-8")
        except UnicodeEncodeError:  # bytes the file system gave Python undecoded
            raise AutomrError(f"{value!s:.200} is not a valid UTF-8 path (e.g. a Latin-1 folder "
                              f"name): automr records paths in JSON and safetensors opens "
                              f"files by UTF-8 name; rename it") from None
    if isinstance(value, Path):
        return home_path(value)
    if path and isinstance(value, str) and value.startswith("~"):
        return str(home_path(value))
    if isinstance(value, (list, tuple)):
        return type(value)(_home_expanded(v, path) for v in value)
    return value


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
"""A write the disk refused: no space left, over quota, file too large, read-only."""


def disk_error(error: Exception) -> str | None:
    """One line for a write the disk refused (an ``OSError``, the error safetensors or
    tokenizers raise around one, or torch.save's writer failing), None for anything else.
    Every artifact is written atomically, so nothing half written is left to be read back:
    the same command resumes."""
    if isinstance(error, OSError):
        code, where = error.errno, f" {error.filename}" if error.filename else ""
    elif isinstance(error, RuntimeError) and "unexpected pos" in str(error):
        return ("could not write a file (torch.save's writer failed: the disk is full, over "
                "quota or read-only). Free space (or make the folder writable), then rerun "
                "the same command: it resumes")
    elif (code := wrapped_errno(error)) is not None:  # Rust libraries' (tokenizers')
        where = ""
    else:
        return None
    if code not in DISK_ERRNOS:
        return None
    return (f"could not write{where}: {os.strerror(code)}. Free space (or make the folder "
            f"writable), then rerun the same command: it resumes")


def path_error(error: Exception, given: Sequence[Path] = ()) -> str | None:
    """One line for an ``OSError`` about a path that cannot be used as given: no permission, a
    file where a folder is needed (or the reverse), or (for the ``given`` paths, the command's
    options) one that does not exist and cannot be created, such as ``--out /proc/x``. None
    for anything else (a bug's traceback stays)."""
    if not isinstance(error, OSError) or not error.filename:
        return None
    path = Path(str(error.filename2 or error.filename))  # os.replace: the target
    named = _given_path(path, given)
    link = _broken_link(path) if error.errno in (errno.ELOOP, errno.EEXIST, errno.ENOENT) \
        else None
    if link is not None:
        loop = error.errno == errno.ELOOP or _loops(link)
        return (f"cannot use {named or path}: {link} is a link to {os.readlink(link)}, which "
                + ("leads back to itself (a loop of links)" if loop else "does not exist"))
    if error.errno == errno.ENOENT and named is not None:
        return f"cannot use {named}: it does not exist and cannot be created there"
    if error.errno not in (errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR,
                           errno.EISDIR):
        return None
    path = named or path
    if error.errno == errno.EISDIR:
        return f"cannot use {path}: it is a folder, not a file"
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        file = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if file is not None:
            return f"cannot use {path}: {'it' if file == path else file} is a file, not a folder"
    return f"cannot use {path}: {os.strerror(error.errno).lower()}"


def _broken_link(path: Path) -> Path | None:
    """``path`` or the folder above it that is a link to nothing usable (a loop, a missing
    target); None where none is, or the folders cannot be looked into."""
    try:
        return next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()),
                    None)
    except OSError:  # no permission to look (pathlib raises it, as of 3.11)
        return None


def _loops(link: Path) -> bool:
    """Whether following ``link`` comes back to a link already followed."""
    try:
        os.stat(link)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _given_path(path: Path, given: Sequence[Path]) -> Path | None:
    """The path to name for ``path``: itself when it is one of ``given`` or a folder above
    one; the given one when it is beside it (an atomic write's temporary ``.NAME.partial``);
    None otherwise (a file inside the command's folders)."""
    where = Path(os.path.abspath(path))
    for option in given:
        full = Path(os.path.abspath(option))
        if where == full or where in full.parents:
            return path
        if where == partial_path(full):
            return option
    return None


def option_error(error: Exception, options: Mapping[str, str] | None = None) -> str:
    """A validator's message in one line: attrs' ``in_`` as ``--name 'value': choose one of
    ...``, others as their first line (beartype's and attrs' messages name the field).
    ``options`` names the option of a field whose name is not the option's (``kind`` ->
    ``context``); other fields are their option with dashes."""
    def option(field: str) -> str:
        return "--" + (options or {}).get(field, field).replace("_", "-")

    args = error.args
    if len(args) == 4 and hasattr(args[1], "name"):  # in_(...): (msg, attribute, options, value)
        return f"{option(args[1].name)} {args[3]!r}: choose one of {', '.join(map(str, args[2]))}"
    text = str(args[0]) if args else str(error)
    # beartype on a Literal field: "... parameter monitor='foo' violates type hint
    # typing.Literal['kl', 'top1'], ..." -> "--monitor 'foo': choose one of kl, top1"
    literal = re.search(r"parameter (\w+)=(.+?) violates type hint typing\.Literal\[(.+?)\]",
                        text)
    if literal:
        choices = ", ".join(c.strip().strip("'\"") for c in literal[3].split(","))
        return f"{option(literal[1])} {literal[2]}: choose one of {choices}"
    line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    # attrs' gt/ge/...: "'test_samples' must be > 0: 0" -> "--test-samples must be > 0: 0"
    return re.sub(r"^'(\w+)' must", lambda m: f"{option(m[1])} must", line)


N = TypeVar("N", int, float)


def zero_is(value: N, option: str, meaning: str) -> N | None:
    """An option's ``value`` where 0 means ``meaning`` (every sample, no clipping, the
    default): None for 0, and a negative value refused in one line that says so (the config
    it goes to says "must be > 0", though 0 is taken)."""
    if value < 0:
        raise AutomrError(f"{option} must be >= 0 (0 = {meaning}), got {value}")
    return value or None


def checked_options(what: str, build: Callable[[], R],
                    options: Mapping[str, str] | None = None) -> R:
    """``build()``, a config made of command-line options, with a value its validators refuse
    turned into one line (:class:`AutomrError`) instead of a traceback; ``options`` as in
    :func:`option_error`."""
    try:
        return build()
    except (ValueError, WrongTypeError) as error:  # WrongTypeError: beartype's, a Literal's
        raise AutomrError(f"invalid {what} options: {option_error(error, options)}") from None


def option_group(name: str, options: Mapping[str, tuple[Any, Any]],
                 build: Callable[..., Any]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give a command a group of options declared once, received as one value.

    ``options`` maps each parameter name to its ``(Annotated type, default)``. The command
    declares a parameter ``name`` instead; the options take its place on the command line (in
    that order) and the command receives ``build(**their values)`` as ``name``.
    """

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(command)
        if name not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {name!r} for its options")
        keyword = inspect.Parameter.KEYWORD_ONLY
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name == name:
                parameters += [inspect.Parameter(option, keyword, annotation=annotation,
                                                 default=default)
                               for option, (annotation, default) in options.items()]
            else:
                parameters.append(parameter.replace(kind=keyword))

        @functools.wraps(command)
        def with_group(**kwargs: Any) -> R:
            values = {option: kwargs.pop(option) for option in options}
            return command(**kwargs, **{name: build(**values)})

        with_group.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return with_group

    return decorate


@attrs.frozen
class Runtime:
    """``--device``, ``--dtype``, ``--cache-dir`` (and ``--quiet``): where a command's models
    load and run, and whether it shows progress."""

    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Path | None = None
    quiet: bool = False
    exact: bool = False
    """``auto`` means float32 on every device, not bfloat16 on CUDA (:func:`runtime_options`)."""

    def __attrs_post_init__(self) -> None:
        """A misspelt ``--dtype`` or ``--device``, or a device this machine lacks, is refused
        at once, also by a command whose methods load no model (``evaluate --methods
        pop,cooc``), where it was silently ignored (and recorded as the run's)."""
        import torch

        from automr.devices import resolve_device
        from automr.llm.loading import resolve_dtype

        resolve_dtype(self.dtype, torch.device("cpu"))  # refuses an unknown name
        resolve_device(self.device)

    @property
    def progress(self) -> bool:
        return not self.quiet

    def say(self, line: str) -> None:
        """A step's message, on stderr beside the progress (a redirected stdout holds only
        what the command prints); nothing with ``--quiet``."""
        if self.progress:
            typer.echo(line, err=True)

    def keywords(self) -> dict[str, Any]:
        """``device=``, ``dtype=``, ``cache_dir=`` for the library functions that take them."""
        dtype = "float32" if self.exact and self.dtype == "auto" else self.dtype
        return {"device": self.device, "dtype": dtype, "cache_dir": self.cache_dir}

    def load_model(self, name: str) -> "LoadedModel":
        """The base model ``name`` (embedded name, HF id or folder), loaded here."""
        from automr.llm.loading import load_model

        return load_model(name, **self.keywords())


def runtime_options(quiet: bool = True, exact: bool = False,
                    ) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give a command ``--device``, ``--dtype``, ``--cache-dir`` (and ``--quiet`` unless
    ``quiet`` is False), received as one :class:`Runtime` named ``runtime``. ``exact``: the
    command computes small differences of log-likelihoods (eq. 5), so ``--dtype auto`` is
    float32 on every device."""
    options: dict[str, tuple[Any, Any]] = {
        "device": (DeviceOption, "auto"),
        "dtype": (ExactDtypeOption if exact else DtypeOption, "auto"),
        "cache_dir": (CacheDirOption, None)}
    if quiet:
        options["quiet"] = (QuietOption, False)
    return option_group("runtime", options, functools.partial(Runtime, exact=exact))
