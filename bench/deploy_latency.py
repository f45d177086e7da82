"""Deploy latency: seconds from the Deploy POST to Running, beside a bare Docker SDK script.

Needs a running console (`make run` in another terminal). For each round it
  * bare:    creates and starts a container of the demo image with the Docker SDK,
             publishes its port on 127.0.0.1 and polls its health path until it answers;
             once on the default bridge, and once on a bridge network created for it
             (the same work the console does to isolate each service);
  * console: POSTs the Deploy form of the running console (one instance, demo
             image) and polls the database until the service is Running;
then removes both. It prints the medians and the console's overhead.

    .venv/bin/python bench/deploy_latency.py [--rounds 10] [--url http://127.0.0.1:8000]
"""

import argparse
import http.client
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

import docker
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from services.models import AIApplicationVersion, Service  # noqa: E402

IMAGE = "rts-demo-model:1.0.0"
POLL_SECONDS = 0.01


def healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def bare_round(client: docker.DockerClient, *, own_network: bool = False) -> float:
    """One container of the demo image until it answers; with `own_network`, on a
    bridge network created for it, as the console isolates every service."""
    name = f"bench-bare-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    network = None
    if own_network:
        network = client.networks.create(name, driver="bridge", labels={"bench": "1"})
    container = client.containers.run(
        IMAGE,
        name=name,
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", None)},
        nano_cpus=1_000_000_000,
        mem_limit="1024m",
        labels={"bench": "1"},
        network=network.name if network is not None else None,
    )
    try:
        container.reload()
        port = int(container.ports["8080/tcp"][0]["HostPort"])
        while not healthy(port):
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - started
    finally:
        container.remove(force=True)
        if network is not None:
            network.remove()


def login(base_url: str) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{base_url}/login/")
    page.raise_for_status()
    password = (ROOT / ".run" / "admin-password").read_text().strip()
    response = session.post(
        f"{base_url}/login/",
        data={"username": "admin", "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{base_url}/login/"},
    )
    if "Log out" not in response.text:
        sys.exit("could not log in as admin with .run/admin-password; is `make run` running?")
    return session


def console_round(session: requests.Session, base_url: str, form: dict) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    data = dict(form, name=name, csrfmiddlewaretoken=session.cookies["csrftoken"])
    started = time.perf_counter()
    response = session.post(
        f"{base_url}/services/deploy/", data=data, headers={"Referer": base_url}, allow_redirects=False
    )
    if response.status_code != 302:
        errors = re.findall(r'class="field-error"[^>]*>([^<]+)', response.text)
        sys.exit(f"deploy refused ({response.status_code}): {errors}")
    while True:
        status = Service.objects.filter(name=name).values_list("status", flat=True).first()
        if status == "running":
            elapsed = time.perf_counter() - started
            break
        if status == "failed":
            sys.exit(f"{name} failed")
        time.sleep(POLL_SECONDS)
    service = Service.objects.get(name=name)
    session.post(
        f"{base_url}/services/{service.id}/delete/",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": base_url},
    )
    deadline = time.monotonic() + 30
    while Service.objects.filter(id=service.id).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()

    client = docker.DockerClient(base_url=settings.DOCKER_HOST)
    session = login(args.url)
    version = AIApplicationVersion.objects.get(application__name="demo-model", version="1.0.0")
    pool_page = session.get(f"{args.url}/services/deploy/").text
    pool_id = re.search(r'name="pool" value="(\d+)"', pool_page).group(1)
    form = {
        "pool": pool_id,
        "app_version": str(version.id),
        "flavor": "cpu.1u1g.free",
        "instance_count": "1",
        "timeout_minutes": "20",
    }

    bare_round(client)  # warm the engine's image and layer caches
    bare, bare_network, console = [], [], []
    for round_number in range(args.rounds):
        bare.append(bare_round(client))
        bare_network.append(bare_round(client, own_network=True))
        console.append(console_round(session, args.url, form))
        print(
            f"round {round_number + 1:2d}: bare {bare[-1]:.3f} s   bare, own network {bare_network[-1]:.3f} s   "
            f"console {console[-1]:.3f} s",
            flush=True,
        )

    bare_median = statistics.median(bare)
    network_median = statistics.median(bare_network)
    console_median = statistics.median(console)
    print()
    print(f"bare Docker SDK, create → healthy:                 median {bare_median:.3f} s")
    print(f"bare Docker SDK, own network + create → healthy:   median {network_median:.3f} s")
    print(f"console, Deploy POST → Running:                   median {console_median:.3f} s")
    print(f"console overhead over the same work (own network): {console_median - network_median:+.3f} s")
    print(f"console overhead over a container on the default bridge: {console_median - bare_median:+.3f} s")


if __name__ == "__main__":
    main()
