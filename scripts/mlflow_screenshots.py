"""Screenshots of galray's MLflow pages as a user sees them, from a real headless browser.

Trains a small emulator (the flow smoke config, a few epochs, into ``--store`` unless it already
holds a trained run), evaluates it by its alias, starts ``mlflow server`` on 127.0.0.1 on a free
port against that store and has headless Chromium (Debian's ``chromium`` package:
``apt-get install -y chromium``) take screenshots of the experiment page, the training run's
overview and metric charts, the registered model version and the evaluation run::

    python scripts/mlflow_screenshots.py                        # -> /tmp/galray-mlflow-pages/
    python scripts/mlflow_screenshots.py --store /tmp/s --out /tmp/shots --epochs 3

The PNGs are for looking at (they are not kept in git); the script prints each one's path.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "galray-pages-demo"  # the registered model (and run name prefix) the script makes
EXPERIMENT = "galray-emulator-pages"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/galray-mlflow-store", help="MLflow store dir")
    parser.add_argument("--out", default="/tmp/galray-mlflow-pages", help="screenshots dir")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (new store)")
    parser.add_argument("--size", default="1400,1000", help="browser window, WIDTH,HEIGHT")
    parser.add_argument(
        "--set", action="append", default=[], help="training config override KEY=VALUE"
    )
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("no chromium: apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    store, out = Path(args.store).resolve(), Path(args.out).resolve()
    store.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    if not _has_model(uri):
        _train_and_evaluate(store, env, args.epochs, args.set)
    pages = _pages(uri)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chromium = None
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(f"{base}/health", server)
        chromium = Browser(browser, args.size)
        for name, route in pages.items():
            path = out / f"{name}.png"
            # MLflow 3.17's UI opens in its GenAI mode unless told (the mode is a browser
            # setting, default "genai"; the experiment's mlflow.experimentKind tag aside)
            route += ("&" if "?" in route else "?") + "workflowType=machine_learning"
            chromium.screenshot(f"{base}/#{route}", path)
            print(f"{path}  <- {base}/#{route}")
    finally:
        if chromium is not None:
            chromium.close()
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
        if server.poll() is None:
            server.kill()
    return 0


def _has_model(uri: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return bool(MlflowClient(uri).get_registered_model(NAME).aliases)
    except MlflowException:
        return False


def _train_and_evaluate(store: Path, env: dict, epochs: int, overrides: list[str]) -> None:
    """``galray train emulator`` on the flow smoke config (fewer epochs), then ``galray
    evaluate emulator`` of its ``@champion``, as a user runs them."""
    galray = [sys.executable, "-m", "galray.cli"]
    survey = store / "survey"
    sets = {
        "data.survey": survey,
        "epochs": epochs,
        "storage_path": store / "runs",
        "tracking.experiment": EXPERIMENT,
        "tracking.registered_name": NAME,
    }
    cmd = [*galray, "train", "emulator", "--config", str(REPO / "configs/emulator-flow-smoke.yaml")]
    for item in [f"{key}={value}" for key, value in sets.items()] + overrides:
        cmd += ["--set", item]
    subprocess.run(cmd, env=env, cwd=store, check=True)
    evaluated = subprocess.run(
        [
            *galray,
            "evaluate",
            "emulator",
            "--model",
            f"models:/{NAME}@champion",
            "--data",
            str(survey),
            "--out",
            str(store / "evaluation"),
            "--rows",
            "3000",
        ],
        env=env,
        cwd=store,
        check=False,
    )
    if evaluated.returncode != 0:
        print(f"galray evaluate failed (exit {evaluated.returncode}): no evaluation page")


def _pages(uri: str) -> dict[str, str]:
    """The UI routes to photograph: name -> route (after ``#``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    run = client.get_run(version.run_id)
    exp = run.info.experiment_id
    pages = {
        "1-experiment": f"/experiments/{exp}",
        "2-run": f"/experiments/{exp}/runs/{run.info.run_id}",
        "3-run-metrics": f"/experiments/{exp}/runs/{run.info.run_id}/model-metrics",
        "4-model-version": f"/models/{NAME}/versions/{version.version}",
    }
    evaluation = client.get_experiment_by_name("galray-evaluation")
    if evaluation is not None:
        runs = client.search_runs(
            [evaluation.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
        )
        if runs:
            pages["5-evaluation-run"] = (
                f"/experiments/{evaluation.experiment_id}/runs/{runs[0].info.run_id}"
            )
    return pages


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(1)
    raise RuntimeError(f"mlflow server did not answer {url} in {timeout:.0f} s")


class Browser:
    """Headless Chromium driven over the DevTools protocol (aiohttp's websocket client, which
    Ray already installs): ``chromium --screenshot`` cannot wait for MLflow's single-page app,
    whose requests keep its virtual-time budget from running out."""

    def __init__(self, executable: str, size: str):
        self.profile = tempfile.TemporaryDirectory(prefix="galray-chromium-")
        self.width, self.height = (int(v) for v in size.split(","))
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={self.width},{self.height}",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile.name}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws_url = pages[0]["webSocketDebuggerUrl"]

    def screenshot(self, url: str, path: Path, settle: float = 4.0, limit: float = 30.0) -> None:
        """Open ``url``, wait until the page's text has not changed for ``settle`` seconds (at
        most ``limit``), and save a PNG of the window."""
        asyncio.run(self._screenshot(url, path, settle, limit))

    async def _screenshot(self, url: str, path: Path, settle: float, limit: float) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                calls = iter(range(1, 1_000_000))

                async def call(method: str, **params):
                    ident = next(calls)
                    await ws.send_json({"id": ident, "method": method, "params": params})
                    async for message in ws:
                        data = json.loads(message.data)
                        if data.get("id") == ident:
                            return data.get("result", {})
                    raise RuntimeError(f"chromium closed the connection during {method}")

                await call("Page.navigate", url=url)
                start, last, stable_since = time.monotonic(), None, time.monotonic()
                while time.monotonic() - start < limit:
                    await asyncio.sleep(0.5)
                    result = await call(
                        "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
                    )
                    text = result.get("result", {}).get("value")
                    if text != last:
                        last, stable_since = text, time.monotonic()
                    elif text and time.monotonic() - stable_since >= settle:
                        break
                shot = await call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
        self.profile.cleanup()


if __name__ == "__main__":
    sys.exit(main())
