"""The configuration model: the tables of the file, their keys, defaults and limits.

``[targets.NAME]`` takes the table of the type it names; each type declares its own table
beside its code and the registry lists them (``daemon.targets.registry``).
"""

from __future__ import annotations

import contextvars
import fnmatch
import ipaddress
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from daemon.config.mail import EmailConfig
from daemon.configfile import ENV_PREFIX, default_state_dir
from daemon.configmodel import (
    DAY_S,
    Model,
    check_placeholders,
    credential_ok,
    not_blank,
    url_ok,
)
from daemon.targets.base import TargetConfig
from daemon.targets.registry import TYPES, config_models

IMAGE_PATTERNS = ["*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.dng"]

# The file's TOML while it is loaded: read once, for the model and the record of its verdict.
toml_data: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("toml_data")


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A case-insensitive matcher for one include/exclude glob."""
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE)


class UploadSettings(Model):
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
        description="Of those, retries made in the worker (while no other file is due) before"
        " the file is parked.",
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


if typing.TYPE_CHECKING:
    TargetTable = TargetConfig
else:  # every registered type's table, told apart by its `type`
    TargetTable = Annotated[typing.Union[config_models()], Field(discriminator="type")]  # noqa: UP007


NotifyEvent = Literal[
    "processing_started",
    "processing_finished",
    "processing_failed",
    "needs_attention",
    "card_removable",
]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = typing.get_args(NotifyEvent)


class NotificationsConfig(Model):
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
    timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Longest wait for one delivery (a webhook, a command, one SMTP connection).",
    )
    email: EmailConfig | None = Field(
        None, description="E-mail the events through an SMTP server (its own table)."
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_ok(cls, value: str | None) -> str | None:
        return None if value is None else url_ok(value)

    @field_validator("command")
    @classmethod
    def _command_ok(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError('must name a program, e.g. ["/usr/local/bin/notify-pilot"]')
        return value


class SpoolSettings(Model):
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

    _dir_ok = field_validator("dir", mode="before")(not_blank)


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def parse_listen(value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6) as a (host, port) pair; None for ``""`` (off)."""
    if not value:
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f'{value!r} is not HOST:PORT, e.g. "127.0.0.1:8710"; "" is off')
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is above 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f'[{host}] is not an IPv6 address, e.g. "[::1]:8710"') from None
    elif host not in LOOPBACK_NAMES:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"{host!r} is not an IP address; listen on an address of this box, e.g."
                ' "0.0.0.0:8710" for every interface'
            ) from None
    return host, port


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebSettings(Model):
    """The status page: datasets, files and actions in a browser, a JSON API, metrics."""

    listen: str = Field(
        "127.0.0.1:8710",
        description='Address and port of the status page; "" turns it off. Any address but'
        ' loopback (e.g. "0.0.0.0:8710" for the LAN) requires a password.',
    )
    password_file: Path | None = Field(
        None,
        description="File holding the page's password (mode 0600): asked by the page, and"
        " accepted as `Authorization: Bearer` by the API and /metrics.",
        json_schema_extra={"example": "/etc/dronesync/web.password"},
    )
    password_credential: str | None = Field(
        None,
        description="systemd credential holding the password, instead of password_file.",
        json_schema_extra={"example": "dronesync-web"},
    )

    _password_file_ok = field_validator("password_file", mode="before")(not_blank)
    _credential_ok = field_validator("password_credential")(credential_ok)

    @field_validator("listen")
    @classmethod
    def _listen_ok(cls, value: str) -> str:
        parse_listen(value.strip())
        return value.strip()

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when the page is off."""
        return parse_listen(self.listen)

    @property
    def on_loopback(self) -> bool:
        """The page is reachable from this machine only (or off)."""
        address = self.address
        return address is None or is_loopback(address[0])


def _companions_note() -> str:
    """The files each target type takes beside the images, as the include key says them."""
    found = [
        f"{entry.name}: {', '.join(entry.config.companions)}"
        for entry in TYPES.values()
        if entry.config.companions
    ]
    return f" ({'; '.join(found)})" if found else ""


class SourceConfig(Model):
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
        " inside the dataset folder). Unset: also the files the target reads beside the images"
        + _companions_note()
        + ".",
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

    _path_ok = field_validator("path", mode="before")(not_blank)

    @field_validator("dataset")
    @classmethod
    def _dataset_ok(cls, value: str) -> str:
        return check_placeholders(value, {"folder", "source", "label", "uuid", "date"})

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
        default_factory=default_state_dir,
        description="Journal and logs; $STATE_DIRECTORY under systemd.",
        json_schema_extra={"example": "/var/lib/dronesync"},
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least important log events shown."
    )
    upload: UploadSettings = Field(default_factory=UploadSettings)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    targets: dict[str, TargetTable] = Field(
        default_factory=dict, description="Named targets; `type` picks the implementation."
    )
    sources: list[SourceConfig] = Field(default_factory=list)

    _state_dir_ok = field_validator("state_dir", mode="before")(not_blank)

    @model_validator(mode="after")
    def _companions(self) -> Settings:
        """A source takes the files its target reads beside the images, unless told otherwise."""

        def taken(source: SourceConfig) -> SourceConfig:
            target = self.targets.get(source.target)
            if target and target.companions and "include" not in source.model_fields_set:
                return source.model_copy(update={"include": [*source.include, *target.companions]})
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
        data = toml_data.get(None)
        if data is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=data))
