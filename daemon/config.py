"""The configuration model: one TOML file, validated by pydantic-settings.

The model is the single source of truth: ``dronesync config example`` is generated from the
field descriptions below, and components receive their own sub-model, never the whole file.
Every problem in a file is reported at once, one line each, naming the file and the key.
"""

from __future__ import annotations

import contextvars
import fnmatch
import os
import re
import string
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from daemon.config_checks import folder_problem, may_contain, path_parts, program_problem
from daemon.errors import ConfigError
from daemon.secrets import secret_finding, secret_path

DEFAULT_CONFIG_PATH = Path("/etc/dronesync/dronesync.toml")
IMAGE_PATTERNS = ["*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.dng"]
# Files ODM reads beside the images: a source feeding a nodeodm target takes them by default.
ODM_ANCILLARY = ["gcp_list.txt", "geo.txt", "image_groups.txt"]
DAY_S = 86_400.0
ENV_PREFIX = "DRONESYNC_"

_toml_path: contextvars.ContextVar[Path] = contextvars.ContextVar("toml_path")


def config_path(explicit: Path | None) -> Path:
    """The config file to use: ``--config``, else ``$DRONESYNC_CONFIG``, else the system one."""
    if explicit is not None:
        return explicit
    env = os.environ.get("DRONESYNC_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _default_state_dir() -> Path:
    # Under systemd, StateDirectory= hands us the folder it created with the right owner.
    return Path(os.environ.get("STATE_DIRECTORY", "/var/lib/dronesync").split(":")[0])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_placeholders(template: str, allowed: set[str]) -> str:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"{exc}; write a literal brace as {{{{ or }}}}") from exc
    unknown = names - allowed
    if unknown:
        bad = ", ".join(sorted("{" + n + "}" for n in unknown))
        known = ", ".join(sorted("{" + n + "}" for n in allowed))
        raise ValueError(f"unknown placeholder {bad}; use {known}")
    return template


def _not_blank(value: Any) -> Any:
    # An empty string would become Path("."): the config file's own folder, silently.
    if isinstance(value, str) and not value.strip():
        raise ValueError("empty path; name a folder")
    return value


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A case-insensitive matcher for one include/exclude glob."""
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


class UploadSettings(_Model):
    """Engine-wide knobs shared by every target."""

    concurrency: int = Field(4, ge=1, le=64, description="Files uploaded at the same time.")
    attempts: int = Field(
        8,
        ge=1,
        le=100,
        description="Attempts per file before it is marked failed (`dronesync retry` resets).",
    )
    quick_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Of those, retries made at once in the worker before the file is parked.",
    )
    backoff_initial_s: float = Field(
        2.0, gt=0, le=3600, description="First wait after a transient failure (full jitter)."
    )
    backoff_max_s: float = Field(
        300.0, gt=0, le=DAY_S, description="Longest wait between two attempts of one file."
    )
    stall_s: float = Field(
        60.0, gt=0, le=DAY_S, description="Abort and retry a transfer that made no progress."
    )
    stuck_s: float = Field(
        1800.0,
        gt=0,
        le=7 * DAY_S,
        description="A dataset whose processing could not start for this long needs attention"
        " (status and one notification); it is still tried again.",
    )
    bandwidth_limit: int | None = Field(
        None,
        ge=1024,
        description="Upload limit in bytes per second for all transfers together; unset: none.",
        json_schema_extra={"example": 10_000_000},
    )
    hash_workers: int = Field(2, ge=1, le=32, description="Processes hashing new files.")


class DirectoryTargetConfig(_Model):
    """A local folder or a mounted NAS share: the embedded default target."""

    type: Literal["directory"] = Field(description="Target implementation.")
    path: Path = Field(
        description="Folder that receives one sub-folder per dataset.",
        json_schema_extra={"example": "/srv/drone-archive"},
    )
    process_command: list[str] | None = Field(
        None,
        description=(
            "Run once per dataset when it is processed; {dataset} and {dataset_dir} are"
            " replaced inside each argument. Exit code 0 means processed."
        ),
        json_schema_extra={"example": ["/usr/local/bin/process-dataset", "{dataset_dir}"]},
    )
    process_timeout_s: float = Field(
        DAY_S, gt=0, le=7 * DAY_S, description="Processing that runs longer is stopped, failed."
    )
    duplicate_scope: Literal["target", "dataset"] = Field(
        "target",
        description='"target": content already sent to this target is a duplicate; "dataset":'
        " only within the same dataset.",
    )
    staging: bool = Field(
        True,
        description="Copy each new image into .dronesync-staging in this folder while it is"
        " hashed, then link it into place: the card is read once, not twice (needs hard links;"
        " without them, or when false, images are hashed, then copied).",
    )

    _path_ok = field_validator("path", mode="before")(_not_blank)

    @field_validator("process_command")
    @classmethod
    def _command_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value or not value[0].strip():
            raise ValueError(
                'must name a program, e.g. ["/usr/local/bin/process", "{dataset_dir}"]'
            )
        for arg in value:
            _check_placeholders(arg, {"dataset", "dataset_dir"})
        return value


def _url_ok(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def _credential_ok(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]+", value):
        raise ValueError("a credential name as in LoadCredential=NAME:PATH (letters, digits, ._-@)")
    return value


class NodeODMTargetConfig(_Model):
    """A NodeODM processing node (OpenDroneMap), directly or the one behind a WebODM."""

    type: Literal["nodeodm"] = Field(description="Target implementation.")
    url: str = Field(
        description="The node's base URL.", json_schema_extra={"example": "http://odm.lan:3000"}
    )
    token_file: Path | None = Field(
        None,
        description="File holding the node's token (mode 0600); unset: the node has none.",
        json_schema_extra={"example": "/etc/dronesync/nodeodm.token"},
    )
    token_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the token; wins"
        " over token_file.",
        json_schema_extra={"example": "nodeodm-token"},
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Processing options passed to the node as they are (see its /options).",
        json_schema_extra={"example": {"dsm": True, "feature-quality": "high"}},
    )
    task_name: str = Field(
        "{dataset}", min_length=1, description="Task name on the node: {dataset}, {target}."
    )
    duplicate_scope: Literal["target", "dataset"] = Field(
        "dataset",
        description='"dataset": a task gets every image of its folder even if sent before in'
        ' another task; "target": content sent to the node once is never sent again.',
    )
    poll_s: float = Field(15.0, ge=0.1, le=3600, description="How often processing is polled.")
    timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Connect and reply timeout of each request."
    )
    max_task_replacements: int = Field(
        5,
        ge=0,
        le=100,
        description="Tasks made anew for a dataset after uploads broke off (after two, waits"
        " doubling from 5 s) before its files fail and need `dronesync retry`.",
    )
    download_dir: Path | None = Field(
        None,
        description="Save the task's all.zip here as DATASET.zip when processing ends.",
        json_schema_extra={"example": "/srv/odm-results"},
    )

    _url_ok = field_validator("url")(_url_ok)
    _credential_ok = field_validator("token_credential")(_credential_ok)
    _paths_ok = field_validator("token_file", "download_dir", mode="before")(_not_blank)

    @field_validator("task_name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_placeholders(value, {"dataset", "target"})


class Pix4DCloudTargetConfig(_Model):
    """PIX4Dcloud (PIX4Dengine Cloud API): one project per dataset, images straight to S3."""

    type: Literal["pix4dcloud"] = Field(description="Target implementation.")
    url: str = Field("https://cloud.pix4d.com", description="The API's base URL.")
    client_id: str = Field(
        min_length=1,
        description="API client id (PIX4Dcloud: Account, API access).",
        json_schema_extra={"example": "your-client-id"},
    )
    client_secret_file: Path | None = Field(
        None,
        description="File holding the client secret (mode 0600).",
        json_schema_extra={"example": "/etc/dronesync/pix4dcloud.secret"},
    )
    client_secret_credential: str | None = Field(
        None,
        description="Name of a systemd credential (LoadCredential=) holding the client secret;"
        " wins over client_secret_file.",
        json_schema_extra={"example": "pix4dcloud-secret"},
    )
    project_name: str = Field(
        "{dataset}", min_length=1, description="Project name in PIX4Dcloud: {dataset}, {target}."
    )
    processing_template: str | None = Field(
        None,
        description="S3 key of a custom processing template already in the project's bucket;"
        " unset: the default template.",
        json_schema_extra={"example": "templates/3d-maps.tmpl"},
    )
    multipart_threshold_mb: int = Field(
        64, ge=5, le=5000, description="Files larger than this go to S3 in parts."
    )
    part_size_mb: int = Field(16, ge=5, le=512, description="Size of each part of those files.")
    parallel_parts: int = Field(
        2,
        ge=1,
        le=32,
        description="Parts of those files sent at once, across all uploads; each is held in"
        " memory until S3 has it (at most parallel_parts * part_size_mb).",
    )
    duplicate_scope: Literal["target", "dataset"] = Field(
        "dataset",
        description='"dataset": a project gets every image of its folder even if sent before in'
        ' another project; "target": content sent once is never sent again.',
    )
    poll_s: float = Field(45.0, ge=0.1, le=3600, description="How often processing is polled.")
    timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Connect and reply timeout of each request."
    )

    _url_ok = field_validator("url")(_url_ok)
    _credential_ok = field_validator("client_secret_credential")(_credential_ok)
    _paths_ok = field_validator("client_secret_file", mode="before")(_not_blank)

    @field_validator("project_name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        return _check_placeholders(value, {"dataset", "target"})


TargetConfig = Annotated[
    DirectoryTargetConfig | NodeODMTargetConfig | Pix4DCloudTargetConfig,
    Field(discriminator="type"),
]
TARGET_TYPES = ("directory", "nodeodm", "pix4dcloud")


NotifyEvent = Literal[
    "processing_started",
    "processing_finished",
    "processing_failed",
    "needs_attention",
    "card_removable",
]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = typing.get_args(NotifyEvent)


class NotificationsConfig(_Model):
    """Tell the operator when processing starts, ends or fails, or a dataset needs them."""

    webhook_url: str | None = Field(
        None,
        description="POST a JSON document about each event to this URL.",
        json_schema_extra={"example": "https://hooks.example.org/dronesync"},
    )
    command: list[str] | None = Field(
        None,
        description="Run this program for each event, the JSON document on its standard input"
        " and DRONESYNC_EVENT, DRONESYNC_DATASET, DRONESYNC_DETAIL in its environment.",
        json_schema_extra={"example": ["/usr/local/bin/notify-pilot"]},
    )
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS), description="The events that are sent."
    )
    attempts: int = Field(5, ge=1, le=50, description="Tries per event before it is dropped.")
    timeout_s: float = Field(10.0, gt=0, le=600, description="Longest wait for one delivery.")

    @field_validator("webhook_url")
    @classmethod
    def _webhook_ok(cls, value: str | None) -> str | None:
        return None if value is None else _url_ok(value)

    @field_validator("command")
    @classmethod
    def _command_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError('must name a program, e.g. ["/usr/local/bin/notify-pilot"]')
        return value


class SpoolSettings(_Model):
    """Spool mode: local disk where images copied off cards wait for their upload."""

    dir: Path | None = Field(
        None,
        description="Spool folder on local disk; sources with spool = true copy into it.",
        json_schema_extra={"example": "/var/lib/dronesync/spool"},
    )
    max_gb: float = Field(
        20.0, gt=0, le=100_000, description="Most space the spool may use; copying waits above."
    )
    min_free_gb: float = Field(
        1.0, ge=0, le=100_000, description="Free space left on the spool's disk at all times."
    )

    _dir_ok = field_validator("dir", mode="before")(_not_blank)


class SourceConfig(_Model):
    """Where images come from, how folders map to datasets, and when a dataset is done."""

    path: Path = Field(
        description="A folder to watch (a glob such as /run/dronesync/cards/* for card mounts).",
        json_schema_extra={"example": "/srv/drone-inbox"},
    )
    target: str = Field(
        description="Name of a [targets.NAME] table.", json_schema_extra={"example": "archive"}
    )
    layout: Literal["subfolders", "single", "dcim"] = Field(
        "subfolders",
        description='"subfolders": each immediate sub-folder is a dataset; "single": the whole'
        ' folder is one dataset; "dcim": each folder inside DCIM/ is a dataset (a card).',
    )
    dataset: str = Field(
        "{folder}",
        min_length=1,
        description="Dataset name template: {folder} (the dataset folder's name), {source}"
        " (the watched folder's name), {label} and {uuid} (the card's), {date} (capture date"
        " of its first image, YYYY-MM-DD).",
    )
    spool: bool = Field(
        False,
        description="Copy images off this source into [spool] dir first, hashed in the same"
        " read, and upload from there: the card can be removed in minutes.",
    )
    require_mount: bool = Field(
        False,
        description="Each folder matched is a card's mount point: one that is not mounted is"
        " offline (an empty folder left by a pulled card is never taken for deleted files).",
    )
    include: list[str] = Field(
        default_factory=lambda: list(IMAGE_PATTERNS),
        description="Files to take (globs, case-insensitive; a pattern with / matches the path"
        " inside the dataset folder). Unset for a nodeodm target: ODM's gcp_list.txt, geo.txt"
        " and image_groups.txt too.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Files to leave alone, even when included.",
        json_schema_extra={"example": ["*_thumb.jpg"]},
    )
    stable_s: float = Field(
        3.0, ge=0, le=3600, description="A file is ready when unchanged this long."
    )
    quiet_s: float = Field(
        600.0,
        ge=0,
        le=7 * DAY_S,
        description="Processing starts when no file of the dataset changed this long.",
    )
    auto_process: bool = Field(
        True, description="false: the dataset waits as ready for `dronesync process`."
    )
    poll_s: float | None = Field(
        None,
        ge=0.5,
        le=3600,
        description="Poll every so many seconds instead of using inotify (NFS, SMB, FUSE).",
        json_schema_extra={"example": 10},
    )
    rescan_s: float = Field(
        900.0, ge=5, le=DAY_S, description="Full rescan interval; events only make it sooner."
    )

    _path_ok = field_validator("path", mode="before")(_not_blank)

    @field_validator("dataset")
    @classmethod
    def _dataset_ok(cls, value: str) -> str:
        return _check_placeholders(value, {"folder", "source", "label", "uuid", "date"})

    @field_validator("include", "exclude")
    @classmethod
    def _globs_ok(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not pattern.strip():
                raise ValueError("empty glob; remove it")
            if pattern.startswith("/"):
                raise ValueError(f"glob {pattern!r} is absolute; patterns match inside a dataset")
            if pattern.count("[") != pattern.count("]"):
                raise ValueError(f"glob {pattern!r} has an unclosed [ ]")
            compile_glob(pattern)
        return value


class Settings(BaseSettings):
    """The whole configuration file."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Journal and logs; $STATE_DIRECTORY under systemd.",
        json_schema_extra={"example": "/var/lib/dronesync"},
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least important log events shown."
    )
    upload: UploadSettings = Field(default_factory=UploadSettings)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    targets: dict[str, TargetConfig] = Field(
        default_factory=dict, description="Named targets; `type` picks the implementation."
    )
    sources: list[SourceConfig] = Field(default_factory=list)

    _state_dir_ok = field_validator("state_dir", mode="before")(_not_blank)

    @model_validator(mode="after")
    def _odm_ancillary(self) -> Settings:
        """A source feeding a NodeODM node takes ODM's ancillary files unless told otherwise."""

        def taken(source: SourceConfig) -> SourceConfig:
            target = self.targets.get(source.target)
            if isinstance(target, NodeODMTargetConfig) and "include" not in source.model_fields_set:
                return source.model_copy(update={"include": [*source.include, *ODM_ANCILLARY]})
            return source

        # Frozen: set once, while validating.
        object.__setattr__(self, "sources", [taken(source) for source in self.sources])
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Init arguments, then ``DRONESYNC_*`` environment, then the TOML file."""
        del dotenv_settings, file_secret_settings
        path = _toml_path.get(None)
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path))


def _keys(loc: tuple[int | str, ...]) -> list[int | str]:
    keys: list[int | str] = []
    skip_next_tag = False
    for index, item in enumerate(loc):
        if skip_next_tag:
            skip_next_tag = False
            continue
        keys.append(item)
        # targets.NAME is followed by the discriminator tag ("directory"): not a key.
        if index >= 1 and loc[index - 1] == "targets" and len(loc) > index + 1:
            skip_next_tag = True
    return keys


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in _keys(loc):
        parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def _env_variable(loc: tuple[int | str, ...]) -> str | None:
    """The ``DRONESYNC_*`` variable that set the value at ``loc``, if one did.

    The environment wins over the file: a variable named after the key or a table holding it
    (a JSON value), or one below the key (which replaces what the file has there), is where
    the value came from. Names are not case-sensitive.
    """
    names = {name.upper(): name for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    words: list[str] = []
    found = None
    for item in _keys(loc):
        if isinstance(item, int):
            break
        words.append(item.upper())
        found = names.get(ENV_PREFIX + "__".join(words), found)
    if found is None and words:
        below = sorted(n for n in names if n.startswith(ENV_PREFIX + "__".join(words) + "__"))
        found = names[below[0]] if below else None
    return found


def _problem_line(path: Path, error: Any) -> str:
    variable = _env_variable(error["loc"])
    if variable is not None:
        return (
            f"environment variable {variable}: {_loc(error['loc'])}: {_describe(error)};"
            " fix or unset the variable"
        )
    return f"{path}: {_loc(error['loc'])}: {_describe(error)}"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key; check its spelling against `dronesync config example`"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        tag = error.get("ctx", {}).get("tag", error["input"])
        return f"unknown target type {tag!r}; use one of {', '.join(map(repr, TARGET_TYPES))}"
    if kind == "union_tag_not_found":
        return f"missing `type`; use one of {', '.join(map(repr, TARGET_TYPES))}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "input" in error and kind not in {"value_error"} and not isinstance(error["input"], dict):
        message += f" (got {error['input']!r})"
    return message


def _reference_problems(file: Path, raw: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    targets = raw.get("targets")
    names = set(targets) if isinstance(targets, dict) else set()
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources:
        problems.append(f"{file}: sources: no [[sources]] table; add one naming a folder to watch")
        return problems
    spool = raw.get("spool")
    spool_dir = spool.get("dir") if isinstance(spool, dict) else None
    for index, source in enumerate(sources):
        if not isinstance(source, dict):
            continue
        if source.get("spool") is True and not spool_dir:
            problems.append(
                f"{file}: sources[{index}].spool: no [spool] dir is set; add [spool] with"
                " dir = a folder on local disk"
            )
        target = source.get("target")
        if isinstance(target, str) and target not in names:
            known = ", ".join(sorted(names)) or "none defined"
            problems.append(
                f"{file}: sources[{index}].target: no target named {target!r}"
                f" (targets: {known}); add [targets.{target}] or fix the name"
            )
    return problems


def load_config(path: Path) -> Settings:
    """Read and validate ``path``; raise ConfigError listing every problem in it."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(
            [f"{path}: file not found; write one (`dronesync config example`) or pass --config"]
        ) from exc
    except PermissionError as exc:
        raise ConfigError([f"{path}: cannot be read by this user; check its permissions"]) from exc
    except IsADirectoryError as exc:
        raise ConfigError([f"{path}: is a folder; name the TOML file itself"]) from exc
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read ({exc.strerror or exc})"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text; save it as UTF-8"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from exc
    problems: list[str] = []
    settings: Settings | None = None
    token = _toml_path.set(path)
    try:
        settings = Settings()
    except ValidationError as exc:
        problems.extend(_problem_line(path, e) for e in exc.errors())
    except SettingsError as exc:
        # A value that is not JSON where a table or list is expected (DRONESYNC_UPLOAD={...).
        field = re.search(r'field "([^"]+)"', str(exc))
        key = field.group(1) if field else ""
        variable = _env_variable((key,)) or f"{ENV_PREFIX}{key.upper()}"
        problems.append(
            f"environment variable {variable}: {key}: not valid JSON for this table or list;"
            " fix or unset the variable"
        )
    finally:
        _toml_path.reset(token)
    problems.extend(_reference_problems(path, raw))
    if problems or settings is None:
        raise ConfigError(problems)
    settings = _relative_to(settings, path.parent.resolve())
    problems = _overlap_problems(path, settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _anchor(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def _relative_to(settings: Settings, base: Path) -> Settings:
    """Relative paths in a file are taken relative to the file's own folder."""
    targets: dict[str, TargetConfig] = {}
    for name, target in settings.targets.items():
        if isinstance(target, DirectoryTargetConfig):
            command = target.process_command
            if command and "/" in command[0] and not command[0].startswith("/"):
                command = [str(base / command[0]), *command[1:]]
            targets[name] = target.model_copy(
                update={"path": _anchor(target.path, base), "process_command": command}
            )
            continue
        update: dict[str, Any] = {}
        for key in ("token_file", "download_dir", "client_secret_file"):
            value = getattr(target, key, None)
            if value is not None:
                update[key] = _anchor(value, base)
        targets[name] = target.model_copy(update=update)
    sources = [s.model_copy(update={"path": _anchor(s.path, base)}) for s in settings.sources]
    spool = settings.spool
    if spool.dir is not None:
        spool = spool.model_copy(update={"dir": _anchor(spool.dir, base)})
    return settings.model_copy(
        update={
            "spool": spool,
            "state_dir": _anchor(settings.state_dir, base),
            "targets": targets,
            "sources": sources,
        }
    )


def _written_folders(settings: Settings) -> list[tuple[str, Path]]:
    """The folders the daemon writes into, each with its key: directory targets, the spool."""
    folders = [
        (f"targets.{name}.path", target.path)
        for name, target in settings.targets.items()
        if isinstance(target, DirectoryTargetConfig)
    ]
    if settings.spool.dir is not None:
        folders.append(("spool.dir", settings.spool.dir))
    return folders


def _overlap_problems(file: Path, settings: Settings) -> list[str]:
    """Sources that take the same files, and folders written by dronesync inside a source."""
    sources = [
        (f"sources[{i}].path", s.path, path_parts(s.path)) for i, s in enumerate(settings.sources)
    ]
    problems: list[str] = []
    for j, (key, path, parts) in enumerate(sources):
        for other_key, other, other_parts in sources[:j]:
            if parts == other_parts:
                problems.append(
                    f"{file}: {key}: {path} is already watched by {other_key}; a folder is"
                    " watched by one source only: remove one of the two [[sources]]"
                )
            elif may_contain(other_parts, parts) or may_contain(parts, other_parts):
                where = "inside" if may_contain(other_parts, parts) else "around"
                problems.append(
                    f"{file}: {key}: {path} is {where} {other_key} ({other}): the files there"
                    " would be taken twice; make the two sources separate folders"
                )
    for key, path in _written_folders(settings):
        parts = path_parts(path)
        for source_key, source, source_parts in sources:
            if may_contain(source_parts, parts):
                problems.append(
                    f"{file}: {key}: {path} is inside the watched {source_key} ({source}):"
                    " what dronesync writes there would come back as a new dataset; move it"
                    " out of every source"
                )
            elif may_contain(parts, source_parts):
                problems.append(
                    f"{file}: {source_key}: {source} is inside {key} ({path}), which dronesync"
                    " writes: it would come back as a new dataset; watch a folder outside it"
                )
    return problems


def runtime_problems(path: Path, settings: Settings) -> list[str]:
    """Problems only visible on this machine, all of them fatal to the daemon."""
    errors, access = runtime_findings(path, settings)
    return errors + access


def runtime_findings(path: Path, settings: Settings) -> tuple[list[str], list[str]]:
    """Problems on this machine, split: errors, and what only this user may not access.

    ``config check`` run by an operator instead of the service's user warns on the second
    kind (a state_dir or a secret of the service's user); the daemon fails on both.
    """
    errors: list[str] = []
    access: list[str] = []
    state = settings.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError as exc:
        access.append(
            f"{path}: state_dir: {state} cannot be written by this user ({exc.strerror});"
            " the service's user must be able to: create it for that user or point state_dir"
            " elsewhere"
        )
    except OSError as exc:
        errors.append(
            f"{path}: state_dir: {state} cannot be written ({exc.strerror}); create it for this"
            " user or point state_dir elsewhere"
        )
    for key, folder in _written_folders(settings):
        found = folder_problem(folder)
        if found is not None:
            text, only_access = found
            line = f"{path}: {key}: {text}; point {key.rsplit('.', 1)[-1]} at a folder"
            (access if only_access else errors).append(line)
    errors.extend(_program_problems(path, settings))
    secret_errors, secret_access = _secret_problems(path, settings)
    return errors + secret_errors, access + secret_access


def _program_problems(path: Path, settings: Settings) -> list[str]:
    commands = [
        (f"targets.{name}.process_command", target.process_command)
        for name, target in settings.targets.items()
        if isinstance(target, DirectoryTargetConfig)
    ]
    commands.append(("notifications.command", settings.notifications.command))
    problems: list[str] = []
    for key, command in commands:
        problem = program_problem(command[0]) if command else None
        if problem is not None:
            problems.append(
                f"{path}: {key}: {problem}; install it, or name the program by its full path"
            )
    return problems


def _secret_problems(path: Path, settings: Settings) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    access: list[str] = []
    for name, target in settings.targets.items():
        if isinstance(target, NodeODMTargetConfig):
            file, credential, stem = target.token_file, target.token_credential, "token"
        elif isinstance(target, Pix4DCloudTargetConfig):
            file, credential = target.client_secret_file, target.client_secret_credential
            stem = "client_secret"
            if file is None and credential is None:
                problems.append(
                    f"{path}: targets.{name}.client_secret_file: required; name the file that"
                    " holds the client secret (or client_secret_credential)"
                )
                continue
        else:
            continue
        key = f"{stem}_credential" if credential else f"{stem}_file"
        try:
            secret = secret_path(file, credential)
        except ConfigError as exc:
            problems.extend(f"{path}: targets.{name}.{key}: {p}" for p in exc.problems)
            continue
        found = None if secret is None else secret_finding(secret)
        if found is not None:
            text, only_access = found
            (access if only_access else problems).append(f"{path}: targets.{name}.{key}: {text}")
    return problems, access


def runtime_warnings(settings: Settings) -> list[str]:
    """Things worth saying that are not errors: a source or target folder absent right now."""
    notes: list[str] = []
    for index, source in enumerate(settings.sources):
        if not any(ch in str(source.path) for ch in "*?[") and not source.path.is_dir():
            notes.append(
                f"sources[{index}].path: {source.path} does not exist yet; it is watched for"
            )
    for name, target in settings.targets.items():
        if isinstance(target, DirectoryTargetConfig) and not target.path.exists():
            notes.append(
                f"targets.{name}.path: {target.path} does not exist yet; it is created on first"
                " upload"
            )
    return notes
