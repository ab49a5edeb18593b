"""`python -m edge {score,run,check-config,dashboard,clip}`. Handlers are imported lazily to keep start-up light."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edge.cli import OneLineParser, dispatch, run_main, single_thread_blas


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m edge", description="dishwatch edge daemon and tools (no TensorFlow)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    s = sub.add_parser("score", help="score images with a bundle; one JSON object per line")
    s.add_argument("--bundle", required=True, help="bundle folder (model.tflite + bundle.json)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument(
        "--threshold", type=float, default=0.0, help="compare against this score instead of the bundle's"
    )
    s.add_argument(
        "--target-fpr",
        type=float,
        default=0.0,
        help="the threshold at this false-positive rate on the bundle's held-out good scores (e.g. 0.05)",
    )
    s.add_argument(
        "--learned",
        default="",
        help="also search the rows a device learned from false alarms (its feedback.learned_file) to "
        "reproduce its verdicts; the file must belong to this bundle",
    )
    s.add_argument("images", nargs="+", help="image files")
    s.set_defaults(handler="edge.score_cli:cli_main")

    r = sub.add_parser("run", help="the daemon")
    r.add_argument("--config", required=True, help="TOML config file")
    r.add_argument("--print-events", action="store_true", help="print each event as one JSON line on stdout")
    r.set_defaults(handler="edge.daemon:cli_main")

    c = sub.add_parser("check-config", help="validate a config and print it resolved (exit 0 ok, 2 bad)")
    c.add_argument("config", help="TOML config file")
    c.set_defaults(handler="edge.config:cli_check")

    d = sub.add_parser("dashboard", help="the pass dashboard: live slots, events, health, staff feedback")
    d.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL, mqtt:// or mqtts://")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    d.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    d.add_argument("--base-topic", default="dishwatch", help="the cameras' mqtt.base_topic")
    d.add_argument("--username", default="", help="MQTT user name")
    d.add_argument("--password-file", default="", help="file whose first line is the MQTT password")
    d.add_argument("--ca-file", default="", help="CA bundle for mqtts:// (default: the system's)")
    d.add_argument("--client-id", default="", help="MQTT client id (default: dishwatch-dashboard-<n>)")
    d.add_argument(
        "--stale-after",
        type=float,
        default=75.0,
        help="seconds without stats before a camera gets a banner (default 75 = 2.5 x the 30-s interval)",
    )
    d.set_defaults(handler="edge.dashboard:cli_main")

    k = sub.add_parser("clip", help="render a synthetic service clip of the pass")
    k.add_argument("--data", required=True, help="dataset folder whose test split supplies the plates")
    k.add_argument("--out", required=True, help="output video (.mp4 or .avi)")
    k.add_argument("--timeline", required=True, help="output timeline JSON")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--size", default="1280x720", help="frame size WxH (default 1280x720)")
    k.add_argument("--fps", type=float, default=15.0, help="frames per second (default 15)")
    k.add_argument("--slots", type=int, default=2, help="slots on the pass, 1-4 (default 2)")
    k.add_argument("--plates", type=int, default=6, help="plates served (default 6)")
    k.add_argument("--rest", type=float, default=4.0, help="seconds a plate rests in its slot (default 4)")
    k.add_argument("--gap", type=float, default=1.5, help="empty seconds between a slot's plates")
    k.add_argument("--lead-in", type=float, default=1.5, help="empty seconds at the start (default 1.5)")
    k.add_argument("--defect", help="use only this defect for the anomalous plates (default: all)")
    k.add_argument("--shape", choices=["square", "circle"], default="square", help="how plates are cut")
    k.set_defaults(handler="edge.clip:cli_main")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # before a handler imports numpy: every edge command scores or serves next to TFLite's own thread pool
    return dispatch(build_parser(), argv, before=lambda _args: single_thread_blas())


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m edge"))
