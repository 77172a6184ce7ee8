"""The configuration: one TOML file, validated by pydantic-settings; this is its import surface.

The model (``model``) is the single source of truth: ``dronesync config example`` is generated
from its field descriptions (``example``), and components receive their own sub-model, never
the whole file. ``load`` reads a file and reports every problem at once, one line each, naming
the file and the key; ``checks`` holds what only the machine can tell (folders that overlap,
programs, secrets). Each target type's table lives with the target (``daemon.targets``).
"""

from daemon.config.checks import runtime_findings, runtime_problems, runtime_warnings
from daemon.config.load import load_checked, load_config
from daemon.config.mail import EmailConfig
from daemon.config.model import (
    IMAGE_PATTERNS,
    NOTIFY_EVENTS,
    NotificationsConfig,
    NotifyEvent,
    Settings,
    SourceConfig,
    SpoolSettings,
    UploadSettings,
    WebSettings,
    compile_glob,
)
from daemon.configfile import DEFAULT_CONFIG_PATH, ENV_PREFIX, config_path

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "IMAGE_PATTERNS",
    "NOTIFY_EVENTS",
    "EmailConfig",
    "NotificationsConfig",
    "NotifyEvent",
    "Settings",
    "SourceConfig",
    "SpoolSettings",
    "UploadSettings",
    "WebSettings",
    "compile_glob",
    "config_path",
    "load_checked",
    "load_config",
    "runtime_findings",
    "runtime_problems",
    "runtime_warnings",
]
