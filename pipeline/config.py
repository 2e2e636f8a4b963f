"""Newsletter-wide settings from newsletter.yaml, found from the current folder upward as git does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, Problem, raise_if_blocking
from pipeline.schema import read_yaml

CONFIG_NAME = "newsletter.yaml"


@dataclass(frozen=True, kw_only=True)
class StopWhen:
    """A send stops by itself above these rates (see pipeline.send.brake); Gmail's and Yahoo's bulk-sender
    rules call 0.3 % complaints an emergency."""

    bounce_rate: float = 0.05
    complaint_rate: float = 0.003
    min_delivered: int = 1000  # deliveries reported (delivered or bounced) before the rates count


def _stop_when(data: dict[str, Any]) -> StopWhen:
    default = StopWhen()
    return StopWhen(bounce_rate=float(data.get("bounce_rate", default.bounce_rate)),
                    complaint_rate=float(data.get("complaint_rate", default.complaint_rate)),
                    min_delivered=int(data.get("min_delivered", default.min_delivered)))


@dataclass(frozen=True, kw_only=True)
class Sending:
    categories: tuple[str, ...] = ()
    unsubscribe_group_id: int | None = None
    batch_size: int = 1000
    requests_per_second: float = 10.0
    timeout_seconds: float = 30.0
    retry_budget_seconds: float = 600.0
    concurrency: int = 4  # requests in flight at once, each with its own intent committed first
    stop_when: StopWhen = field(default_factory=StopWhen)


@dataclass(frozen=True, kw_only=True)
class Config:
    root: Path
    name: str
    sender_email: str
    sender_name: str = ""
    reply_to: str | None = None
    base_url: str
    theme: str = "default"
    language: str = "en"
    size_budget_kb: float = 100.0
    size_warning_kb: float = 80.0
    contact: dict[str, Any] = field(default_factory=dict)
    image_column_px: int = 552  # the theme's content column: images are shown at most this wide
    image_max_kb: float = 200.0  # check warns about a heavier image
    sending: Sending = field(default_factory=Sending)

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def theme_dir(self) -> Path:
        return self.templates_dir / self.theme

    @property
    def issues_dir(self) -> Path:
        return self.root / "issues"

    @property
    def subscribers_dir(self) -> Path:
        return self.root / "subscribers"

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def state_dir(self) -> Path:
        """Send log and suppressions: personal data, git-ignored."""
        return self.root / ".newsletter"

    @property
    def sendlog_path(self) -> Path:
        return self.state_dir / "sendlog.sqlite3"


def find_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    raise ConfigError(
        f"no {CONFIG_NAME} found in {here} or any folder above it — "
        f"run the command inside a newsletter folder, or create {CONFIG_NAME} (see README)"
    )


def load_config(root: Path | None = None) -> Config:
    """Find, read and validate the config; every problem is reported at once."""
    root = find_root(root)
    path = root / CONFIG_NAME
    data, problems = read_yaml(path, schema="config")
    raise_if_blocking(problems, ConfigError, f"{path} is not valid:")
    size_budget = float(data.get("size_budget_kb", 100))
    size_warning = float(data.get("size_warning_kb", size_budget * 0.8))
    if size_warning > size_budget:
        raise ConfigError(f"{path} is not valid:", problems=[Problem(
            message="size_warning_kb is larger than size_budget_kb", file=path,
            fix="set size_warning_kb below size_budget_kb")])
    if not (root / "templates" / data.get("theme", "default")).is_dir():
        raise ConfigError(f"{path} is not valid:", problems=[Problem(
            message=f"theme {data.get('theme', 'default')!r} has no folder in templates/", file=path,
            fix="set theme to the name of a folder in templates/")])
    sending = data.get("sending", {})
    images = data.get("images", {})
    return Config(
        root=root,
        name=data["name"],
        sender_email=data["sender"]["email"],
        sender_name=data["sender"].get("name", ""),
        reply_to=data.get("reply_to"),
        base_url=data["base_url"],
        theme=data.get("theme", "default"),
        language=data.get("language", "en"),
        size_budget_kb=size_budget,
        size_warning_kb=size_warning,
        contact=data.get("contact", {}),
        image_column_px=images.get("column_px", 552),
        image_max_kb=float(images.get("max_kb", 200)),
        sending=Sending(
            categories=tuple(sending.get("categories", ())),
            unsubscribe_group_id=sending.get("unsubscribe_group_id"),
            batch_size=sending.get("batch_size", 1000),
            requests_per_second=float(sending.get("requests_per_second", 10)),
            timeout_seconds=float(sending.get("timeout_seconds", 30)),
            retry_budget_seconds=float(sending.get("retry_budget_seconds", 600)),
            concurrency=int(sending.get("concurrency", 4)),
            stop_when=_stop_when(sending.get("stop_when", {})),
        ),
    )
