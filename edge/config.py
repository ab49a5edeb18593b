"""The daemon's configuration: one TOML file, validated here and nowhere else.

Why one place: every error must name the key (`mqtt.url: ...`), defaults must be visible in one file, and
`check-config` must print exactly what `run` will use. Secrets are resolved here (password file or environment)
and never appear in `resolved()` output or logs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edge.calibration import ThresholdOverride
from edge.errors import UserError

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^[a-z0-9_-]+$")
PASSWORD_ENV = "DISHWATCH_MQTT_PASSWORD"


@dataclass(frozen=True)
class CameraConfig:
    id: str = "pass1"
    source: str = "clip.mp4"  # 0 | /dev/video0 | rtsp://... | http://... | a video file | an image folder
    fps: float = 15.0  # frames processed per second at most
    idle_fps: float = 5.0  # ... while the pass is quiet (slots empty or held, nothing moving); 0 = always fps
    loop: bool = False  # video files and image folders: start again at the end
    width: int = 0  # expected frame size; 0 = whatever the first good frame has
    height: int = 0
    reconnect_max_s: float = 30.0  # cap of the exponential reopen backoff
    stall_timeout_s: float = (
        20.0  # no frame for this long = source lost (generous: sparse streams are normal)
    )


@dataclass(frozen=True)
class SlotConfig:
    id: str
    rect: tuple[int, int, int, int]  # x, y, w, h in frame pixels


@dataclass(frozen=True)
class GateConfig:
    """When a slot counts as changed, moving and still. Defaults suit a 15 fps camera."""

    diff_threshold: float = 25.0  # difference in any colour channel that counts a pixel as changed (0-255)
    changed_fraction: float = (
        0.02  # fraction of changed pixels against the empty reference = something is there
    )
    motion_fraction: float = 0.005  # fraction of pixels changed frame-to-frame = moving
    still_seconds: float = 0.1  # no motion in the slot this long (and the guard ring clear) = still, score it
    empty_seconds: float = 1.0  # back to the empty reference this long = empty
    background_alpha: float = 0.02  # how fast the empty reference follows slow light changes while empty
    analysis_width: int = 96  # slots are compared downscaled to this width (cheap gating)
    rescore_fraction: float = 0.15  # a held dish that settles this changed is scored again (swapped)
    # The guard ring just outside each slot (edge/gate.py): an arm over a plate crosses it, so a short
    # still_seconds is safe. Width in frame pixels; -1 = automatic (6 % of the slot's shorter side); 0 = no ring.
    guard_px: int = -1
    guard_relearn_seconds: float = 5.0  # a still change across the ring this long is learned as background


@dataclass(frozen=True)
class ModelConfig:
    bundle: str = "models/default"
    threads: int = 2
    # the kitchen's own trade of false alarms against recall, instead of the bundle's calibrated threshold
    # (edge.calibration): an absolute score, or a false-positive rate on the bundle's held-out good scores; 0 = not set
    threshold: float = 0.0
    target_fpr: float = 0.0

    @property
    def threshold_override(self) -> ThresholdOverride:
        return ThresholdOverride(self.threshold, self.target_fpr)


@dataclass(frozen=True)
class MqttConfig:
    url: str = "mqtt://127.0.0.1:1883"  # mqtts:// for TLS
    username: str = ""
    password_file: str = ""  # or the environment variable DISHWATCH_MQTT_PASSWORD
    ca_file: str = ""  # CA bundle for mqtts://; empty = the system's
    client_id: str = ""  # empty = dishwatch-<camera id>
    base_topic: str = "dishwatch"  # topics are <base_topic>/<camera id>/...
    discovery_prefix: str = "homeassistant"  # empty = no Home Assistant discovery
    keepalive: int = 30
    spool: str = "/var/lib/dishwatch/spool.sqlite"
    spool_max_events: int = 10000  # bounded: the oldest are dropped (and counted) past this
    stats_interval_s: float = 30.0
    # Resolved, never logged or printed: filled from password_file or the environment.
    password: str = field(default="", repr=False)

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlparse(self.url)
        return u.port or (8883 if u.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"


@dataclass(frozen=True)
class SnapshotConfig:
    jpeg_quality: int = 85
    max_width: int = 640


@dataclass(frozen=True)
class HealthConfig:
    watchdog_max_stall_s: float = (
        30.0  # stop pinging the systemd watchdog when no frame/inference for this long
    )


@dataclass(frozen=True)
class FeedbackConfig:
    """Staff feedback from the dashboard becomes training data (edge/feedback.py)."""

    enabled: bool = True
    crops_dir: str = ""  # unannotated crops of recent events; empty = <folder of mqtt.spool>/crops
    dataset_dir: str = ""  # MVTec layout, feedback filed here; empty = <folder of mqtt.spool>/feedback
    max_crops: int = 500  # crops kept (oldest pruned): feedback for an older event is answered "expired"
    learn: bool = True  # a false alarm's crop joins the memory bank at once (kNN bundles; edge/learning.py)
    learned_file: str = ""  # where the learned rows persist; empty = <folder of mqtt.spool>/learned.npz
    max_learned_rows: int = 1000  # fine + coarse rows learned at most; past it the oldest lessons are dropped


@dataclass(frozen=True)
class Config:
    camera: CameraConfig
    slots: tuple[SlotConfig, ...]
    model: ModelConfig
    mqtt: MqttConfig
    gate: GateConfig = GateConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    health: HealthConfig = HealthConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    path: str = ""  # the file it came from; relative paths in it are resolved against its folder

    def resolved(self) -> dict[str, Any]:
        """The config as `run` will use it, secrets masked."""
        d = asdict(self)
        d["mqtt"]["password"] = "***" if self.mqtt.password else ""
        d["slots"] = [{"id": s.id, "rect": list(s.rect)} for s in self.slots]
        return d


# --- parsing ------------------------------------------------------------------------------------------


def _check_keys(table: dict, cls: type, where: str, skip: tuple[str, ...] = ()) -> None:
    known = {f.name for f in fields(cls)} - set(skip)
    for key in table:
        if key not in known:
            raise UserError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check one value against the dataclass field type; ints are accepted where floats are expected."""
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if t == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return value
    if t == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if t == "str":
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, table: Any, where: str, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"{where}: expected a table, got {type(table).__name__}")
    _check_keys(table, cls, where, skip)
    kwargs = {}
    for f in fields(cls):
        if f.name in table and f.name not in skip:
            kwargs[f.name] = _coerce(table[f.name], f.type, f"{where}.{f.name}")
    return cls(**kwargs)


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _resolve_path(base: Path, p: str) -> str:
    if not p:
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q))


def _camera_source(raw: Any, base: Path) -> str:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise UserError(f"camera.source: expected a device index, a path or a URL, got {raw!r}")
    s = str(raw)
    if s.isdigit() or "://" in s or s.startswith("/dev/"):
        return s
    return _resolve_path(base, s)


def read_password_file(path: str | Path, key: str = "mqtt.password_file") -> str:
    """The first line of a password file; a UserError naming `key` (never the content) when unreadable."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UserError(f"{key}: cannot read {p} ({exc.strerror or exc})") from None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def _read_password(m: MqttConfig, base: Path) -> str:
    if m.password_file:
        return read_password_file(_resolve_path(base, m.password_file))
    return os.environ.get(PASSWORD_ENV, "")


def check_mqtt_url(url: str, key: str = "mqtt.url") -> str:
    """mqtt://host[:port] or mqtts://host[:port], else a UserError naming `key`. Shared with the dashboard."""
    try:
        u = urlparse(url)
        u.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        u = None
    if u is None or u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise UserError(f"{key}: expected mqtt://host[:port] or mqtts://host[:port], got {url!r}")
    return url


def parse(data: dict, path: str | Path = "<config>") -> Config:
    """Validate a parsed TOML document; raises UserError naming the offending key."""
    base = Path(path).resolve().parent if str(path) != "<config>" else Path.cwd()
    known = {"camera", "slots", "model", "mqtt", "gate", "snapshot", "health", "feedback"}
    for key in data:
        if key not in known:
            raise UserError(f"{key}: unknown section (known: {', '.join(sorted(known))})")

    cam_t = dict(data.get("camera", {})) if isinstance(data.get("camera", {}), dict) else data["camera"]
    no_src = {k: v for k, v in cam_t.items() if k != "source"} if isinstance(cam_t, dict) else cam_t
    camera = _build(CameraConfig, no_src, "camera")
    if "source" in cam_t:
        camera = CameraConfig(**{**asdict(camera), "source": _camera_source(cam_t["source"], base)})
    if not ID_RE.match(camera.id):
        raise UserError(f"camera.id: must match [a-z0-9_-]+, got {camera.id!r}")
    _positive(camera.fps, "camera.fps")
    if not 0 <= camera.idle_fps <= camera.fps:
        raise UserError(
            f"camera.idle_fps: must be 0 (off) or at most camera.fps ({camera.fps}), got {camera.idle_fps}"
        )
    _positive(camera.reconnect_max_s, "camera.reconnect_max_s")
    _positive(camera.stall_timeout_s, "camera.stall_timeout_s")

    raw_slots = data.get("slots")
    if not isinstance(raw_slots, list) or not raw_slots:
        raise UserError("slots: at least one [[slots]] entry with id and rect is required")
    slots: list[SlotConfig] = []
    for i, s in enumerate(raw_slots):
        where = f"slots[{i}]"
        if not isinstance(s, dict):
            raise UserError(f"{where}: expected a table")
        for key in s:
            if key not in ("id", "rect"):
                raise UserError(f"{where}.{key}: unknown key (known: id, rect)")
        sid = s.get("id")
        if not isinstance(sid, str) or not ID_RE.match(sid):
            raise UserError(f"{where}.id: must be a string matching [a-z0-9_-]+, got {sid!r}")
        rect = s.get("rect")
        if (
            not isinstance(rect, list)
            or len(rect) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in rect)
        ):
            raise UserError(f"{where}.rect: expected [x, y, w, h] as four integers, got {rect!r}")
        if rect[0] < 0 or rect[1] < 0 or rect[2] < 8 or rect[3] < 8:
            raise UserError(f"{where}.rect: x, y must be >= 0 and w, h >= 8, got {rect}")
        if any(o.id == sid for o in slots):
            raise UserError(f"{where}.id: duplicate slot id {sid!r}")
        slots.append(SlotConfig(sid, tuple(rect)))

    model = _build(ModelConfig, data.get("model", {}), "model")
    model = replace(model, bundle=_resolve_path(base, model.bundle))
    if model.threads < 1:
        raise UserError(f"model.threads: must be >= 1, got {model.threads}")
    model.threshold_override.validate()
    bundle = Path(model.bundle)
    if not (bundle / "bundle.json").is_file() or not (bundle / "model.tflite").is_file():
        raise UserError(f"model.bundle: {bundle} is not a bundle folder (needs bundle.json and model.tflite)")
    if (
        model.target_fpr
    ):  # check-config reports a bundle without calibration scores, not only the daemon's start
        from edge.bundle import read_bundle
        from edge.calibration import stored_good_scores

        stored_good_scores(read_bundle(bundle, verify_hash=False), "model.target_fpr")

    mqtt = _build(MqttConfig, data.get("mqtt", {}), "mqtt", skip=("password",))
    check_mqtt_url(mqtt.url)
    if mqtt.ca_file:
        ca = Path(_resolve_path(base, mqtt.ca_file))
        if not ca.is_file():
            raise UserError(f"mqtt.ca_file: {ca} does not exist")
    if mqtt.spool_max_events < 1:
        raise UserError(f"mqtt.spool_max_events: must be >= 1, got {mqtt.spool_max_events}")
    _positive(mqtt.stats_interval_s, "mqtt.stats_interval_s")
    mqtt = MqttConfig(
        **{
            **asdict(mqtt),
            "spool": _resolve_path(base, mqtt.spool),
            "ca_file": _resolve_path(base, mqtt.ca_file),
            "password_file": _resolve_path(base, mqtt.password_file),
            "client_id": mqtt.client_id or f"dishwatch-{camera.id}",
            "password": _read_password(mqtt, base),
        }
    )

    gate = _build(GateConfig, data.get("gate", {}), "gate")
    for f in fields(GateConfig):
        if f.name != "guard_px":
            _positive(getattr(gate, f.name), f"gate.{f.name}")
    if gate.guard_px < -1:
        raise UserError(
            f"gate.guard_px: must be >= 0 (0 = no guard ring) or -1 (automatic), got {gate.guard_px}"
        )
    snapshot = _build(SnapshotConfig, data.get("snapshot", {}), "snapshot")
    if not 1 <= snapshot.jpeg_quality <= 100:
        raise UserError(f"snapshot.jpeg_quality: must be 1..100, got {snapshot.jpeg_quality}")
    health = _build(HealthConfig, data.get("health", {}), "health")
    _positive(health.watchdog_max_stall_s, "health.watchdog_max_stall_s")
    feedback = _feedback(data.get("feedback", {}), base, Path(mqtt.spool).parent)
    return Config(camera, tuple(slots), model, mqtt, gate, snapshot, health, feedback, str(path))


def _feedback(table: Any, base: Path, state_dir: Path) -> FeedbackConfig:
    """[feedback]: empty folders default to siblings of the spool (the state directory the service may write)."""
    fb = _build(FeedbackConfig, table, "feedback")
    if fb.max_crops < 1:
        raise UserError(f"feedback.max_crops: must be >= 1, got {fb.max_crops}")
    crops = _resolve_path(base, fb.crops_dir) or str(state_dir / "crops")
    dataset = _resolve_path(base, fb.dataset_dir) or str(state_dir / "feedback")
    for key, p in (("crops_dir", crops), ("dataset_dir", dataset)):
        if Path(p).exists() and not Path(p).is_dir():
            raise UserError(f"feedback.{key}: {p} exists and is not a folder")
    if Path(crops).resolve() == Path(dataset).resolve():
        raise UserError("feedback.dataset_dir: must differ from feedback.crops_dir")
    if fb.max_learned_rows < 1:
        raise UserError(f"feedback.max_learned_rows: must be >= 1, got {fb.max_learned_rows}")
    learned = _resolve_path(base, fb.learned_file) or str(state_dir / "learned.npz")
    if Path(learned).is_dir():
        raise UserError(f"feedback.learned_file: {learned} is a folder, not a file")
    return replace(fb, crops_dir=crops, dataset_dir=dataset, learned_file=learned)


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UserError(f"{p}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{p}: not valid TOML ({exc})") from None
    return parse(data, p)


def cli_check(args) -> int:
    """`python -m edge check-config FILE`: print the resolved config as JSON (secrets masked)."""
    cfg = load(args.config)
    json.dump(cfg.resolved(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
