"""Run the gateway: `python -m gateway [--processes N] [--host H] [--port P]`.

N processes (default: one per core) share the port through SO_REUSEPORT; the
parent restarts a process that dies, and stops them all on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from gateway.config import GatewayConfig
from gateway.server import serve, serve_child


def main() -> None:
    config = GatewayConfig.from_env()
    parser = argparse.ArgumentParser(prog="python -m gateway")
    parser.add_argument("--host", default=config.host)
    parser.add_argument("--port", type=int, default=config.port)
    parser.add_argument("--processes", type=int, default=config.processes or os.cpu_count() or 1)
    args = parser.parse_args()
    config = dataclasses.replace(config, host=args.host, port=args.port, processes=args.processes)

    if args.processes == 1:
        print(f"gateway listening on http://{args.host}:{args.port}", flush=True)
        serve(config)
        return

    # Each process keeps its metrics in files here; /metrics adds them up. A
    # fresh directory per run, as prometheus_client's multiprocess mode asks.
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="rts-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(target=serve_child, args=(config, os.getpid()), daemon=False)
        process.start()
        return process

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    processes = [start() for _ in range(args.processes)]
    print(f"gateway listening on http://{args.host}:{args.port} ({args.processes} processes)", flush=True)
    while not stopping:
        time.sleep(0.5)
        for index, process in enumerate(processes):
            if not process.is_alive() and not stopping:
                print(f"gateway process {process.pid} exited ({process.exitcode}); starting another", flush=True)
                processes[index] = start()
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
