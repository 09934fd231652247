"""`pressa serve --executor ray`: the same app (TF-Serving, KServe v2 and OpenAI routes, continuous
batching inside each replica) as a Ray Serve deployment of N replicas, or between autoscaling bounds;
Ray's proxy routes the requests. Each replica loads the models itself from their paths, so the paths
must be ones every node sees. SIGTERM / Ctrl-C stops the deployment gracefully (in-flight requests get
`--shutdown-timeout` seconds) and the local Ray this command started."""

from __future__ import annotations

import os
import signal
import threading

from pressa.errors import BadArgument

APP = "pressa"


class PressaReplica:
    """One replica: its own copies of the models and the app's state; `/metrics` names the replica."""

    def __init__(self, entries: list[dict], app_options: dict):
        from ray import serve

        from pressa.serve.models import load_models

        self.models = load_models(entries)
        self.replica = serve.get_replica_context().replica_tag
        self.app_options = app_options

    def __serve_build_asgi_app__(self):
        from pressa.serve.app import create_app

        return create_app(self.models, **self.app_options, replica=self.replica)


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise BadArgument(f"--autoscale {text!r}: give MIN:MAX replicas, e.g. 1:4") from None
    if not 0 <= low <= high or high < 1:
        raise BadArgument(f"--autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def deployment_options(replicas: int, autoscale: tuple[int, int] | None, cpus: float,
                       shutdown_timeout: float) -> dict:
    options = {"name": APP, "ray_actor_options": {"num_cpus": cpus},
               "graceful_shutdown_timeout_s": shutdown_timeout, "health_check_period_s": 5}
    if autoscale:
        options["autoscaling_config"] = {"min_replicas": autoscale[0], "max_replicas": autoscale[1],
                                         "target_ongoing_requests": 4}
    else:
        options["num_replicas"] = replicas
    return options


def serve_on_ray(entries: list[dict], app_options: dict, host: str, port: int, replicas: int,
                 autoscale: tuple[int, int] | None, address: str | None, cpus: float, shutdown_timeout: float,
                 say=print) -> None:
    """Deploy and block until SIGTERM / SIGINT."""
    from pressa.engine.executors import join_ray

    try:
        from ray import serve
    except ImportError:
        raise BadArgument("--executor ray needs Ray Serve: pip install 'pressa[ray]'") from None
    started = join_ray(address)
    import ray

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        replica_class = serve.deployment(**deployment_options(replicas, autoscale, cpus, shutdown_timeout))(
            serve.ingress()(PressaReplica))
        serve.run(replica_class.bind(entries, app_options), name=APP, route_prefix="/", blocking=False)
        how = f"{autoscale[0]}..{autoscale[1]} replicas (autoscaling)" if autoscale else f"{replicas} replicas"
        say(f"ray serve: {how} on http://{host}:{port} (pid {os.getpid()})")
        stop.wait()
        say("ray serve: stopping")
    finally:
        try:
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
