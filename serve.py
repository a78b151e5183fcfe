"""
serve.py -- serve a policy over openpi's websocket protocol; concurrent clients share one batched forward pass.

Reads a VLA checkpoint dir written by vla_train.py (loaded as `vla_train.Policy.load(DIR)`); serves it until Ctrl-C.
Needs `pip install -r requirements-serve.txt` (websockets, msgpack).

    python serve.py --policy out/vla --port 8000                  # then, from any machine that reaches it:
    curl localhost:8000/healthz                                   # OK
    python eval_libero.py --policy ws://localhost:8000 --suite spatial --trials-per-task 2
    python eval_libero.py --policy out/vla --workers 4            # eval starts this server itself, in-process
    python serve.py --policy out/vla --max-batch 32 --max-wait-ms 10 --device cuda   # many clients, one GPU

Any openpi client works unchanged (`pip install --no-deps openpi-client==0.1.2`, see requirements-serve.txt):

    from openpi_client import websocket_client_policy
    client = websocket_client_policy.WebsocketClientPolicy(host="localhost", port=8000)
    meta = client.get_server_metadata()      # image_size, cameras, state_dim, horizon, layout, ...
    chunk = client.infer({"observation/image": img,          # uint8 [S, S, 3], upright, S = meta["image_size"]
                          "observation/wrist_image": wrist,  # only if meta["cameras"] lists it
                          "observation/state": state,        # 8 numbers: eef pos, eef axis-angle, gripper qpos
                          "prompt": "put the black bowl on the plate"})["actions"]   # float32 [H, 7]

The protocol (openpi's serving/websocket_policy_server.py, openpi_client/msgpack_numpy.py and
websocket_client_policy.py):
- a websocket without compression; right after the handshake the server sends one binary frame, the metadata
  (a msgpack map, `describe_policy`: what the policy expects). `GET /healthz` answers 200 OK.
- each request is one binary frame, a msgpack map, the observation; each reply one binary frame, a msgpack map:
  `actions` float32 [H, 7] (env units, gripper -1 open / +1 close) and `server_timing`: infer_ms (the forward
  pass), queue_ms (from the request's arrival to its forward pass), batch_size (requests in that pass).
- numpy arrays travel as maps {__ndarray__: True, data: raw bytes, dtype: numpy dtype string, shape}, numpy
  scalars as {__npgeneric__: True, data, dtype}, keys packed as msgpack bin as openpi does. Never pickle: only
  bool, int, uint and float dtypes are decoded, and `data` must hold exactly shape x itemsize bytes.
- the observation is openpi's LIBERO example's: `observation/image` and, if the policy reads it,
  `observation/wrist_image`, uint8 [S, S, 3] upright (LIBERO renders upside down: rotate by 180 degrees) at the
  policy's input size (resize on the client, as openpi does); `observation/state`, 8 finite numbers; `prompt`,
  the instruction. Other keys are ignored. Clients execute the first 5 actions of a chunk, then ask again.
- an error goes back as a text frame: one line naming what was expected for a bad request, the traceback when
  the policy raised. Unlike openpi's server this one keeps the connection open (each request stands alone).
  A message over --max-message-mb is refused by the websocket layer before it is read (reading it is what
  the limit prevents): the connection is closed with code 1009 and a reason naming the limit.

Batching. Every connection's requests join one queue. A single batcher takes the oldest waiting request,
lets up to --max-wait-ms pass for others to join (up to --max-batch), and runs them as one forward pass in a
worker thread while the event loop goes on reading and checking requests. A request whose client has gone is
dropped unanswered; nothing of it remains. A VLA samples the head's noise from torch's global generator, so
served chunks are draws from the same distribution as in-process ones, not the same numbers.
"""
from __future__ import annotations

import asyncio
import http
import math
import os
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import msgpack
import numpy as np
import websockets
from websockets.asyncio.server import serve as ws_serve
from websockets.sync.client import connect as ws_connect

import config
from config import arg, exits_on_bad_files


@dataclass
class Config:
    policy: str = arg("out/vla", "a VLA checkpoint dir written by vla_train.py")
    host: str = arg("0.0.0.0", "address to listen on (127.0.0.1: this machine only)")
    port: int = arg(8000, "TCP port (openpi's default 8000; 0: any free port, printed in the banner)")
    max_batch: int = arg(8, "requests of concurrent clients answered by one forward pass, at most")
    max_wait_ms: float = arg(5.0, "how long the oldest waiting request waits for others to join its batch")
    max_message_mb: float = arg(16.0, "largest request accepted (two 224 px frames + state: ~0.3 MB)")
    device: str = arg("auto", "cpu | cuda | auto (cuda when available)")
    seed: int = arg(7, "torch seed: the action head samples noise")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


def fail(msg: str):
    raise SystemExit(f"serve.py: {msg}")


IMAGE, WRIST, STATE, PROMPT = "observation/image", "observation/wrist_image", "observation/state", "prompt"
STATE_DIM, ACTION_DIM, MAX_PROMPT_CHARS = 8, 7, 4096


# ----------------------------------------------------------------------------- the msgpack-numpy codec
class BadRequest(ValueError):
    """A request the server refuses; the message names what was expected. The connection stays usable."""


NUMERIC_KINDS = "biuf"     # bool, int, uint, float; object arrays would be raw pointers, so they never decode


def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in NUMERIC_KINDS:
        raise TypeError(f"cannot send a numpy array of dtype {obj.dtype}: only bool, int, uint and float")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _field(m: dict, key: str):             # openpi packs these keys as bin; a str key is accepted too
    return m[key.encode()] if key.encode() in m else m.get(key)


def _numeric_dtype(s) -> np.dtype:
    try:
        dt = np.dtype(s) if isinstance(s, str) else None
    except TypeError:
        dt = None
    if dt is None or dt.kind not in NUMERIC_KINDS:
        raise BadRequest(f"array dtype {s!r} refused: expected a numpy dtype string of bool, int, uint or float")
    return dt


def _decode(m: dict):
    """msgpack object hook: the openpi array maps back to numpy; any other map unchanged."""
    if _field(m, "__ndarray__"):
        data, shape, dt = _field(m, "data"), _field(m, "shape"), _numeric_dtype(_field(m, "dtype"))
        if not (isinstance(data, bytes) and isinstance(shape, (list, tuple))
                and all(type(n) is int and n >= 0 for n in shape)):
            raise BadRequest("malformed array: expected {__ndarray__: true, data: bin, dtype: str, shape: [int, ...]}")
        if len(data) != math.prod(shape) * dt.itemsize:
            raise BadRequest(f"array of shape {list(shape)} and dtype {dt.str} needs {math.prod(shape) * dt.itemsize} "
                             f"bytes of data, got {len(data)}")
        return np.frombuffer(data, dt).reshape(shape)
    if _field(m, "__npgeneric__"):
        dt, data = _numeric_dtype(_field(m, "dtype")), _field(m, "data")
        if type(data) not in (bool, int, float):
            raise BadRequest("malformed numpy scalar: expected {__npgeneric__: true, data: number, dtype: str}")
        return dt.type(data)
    return m


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes):
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except BadRequest:
        raise
    except Exception as e:                 # truncated, trailing bytes, bad utf-8, non-string keys, ...
        raise BadRequest(f"malformed message: expected one msgpack map (openpi_client.msgpack_numpy) "
                         f"({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- what the policy expects
def describe_policy(policy, max_batch: int = 1, max_message_bytes: int = 16 << 20) -> dict:
    """The metadata sent on connect: the cameras, image size, state and action shapes the policy was trained
    with, and the image layout named in its vla_config.json ('unknown' when it names none)."""
    uses_images = getattr(policy, "uses_images", True)
    cameras = ([IMAGE] + ([WRIST] if getattr(policy, "uses_wrist", True) else [])) if uses_images else []
    layout = (getattr(policy, "vcfg", None) or {}).get("layout") or getattr(policy, "layout", None) or "unknown"
    horizon = getattr(policy, "horizon", None)
    return dict(server="nanoRoboAlign serve.py", image_size=int(policy.image_size), cameras=cameras,
                image_format="uint8 [S, S, 3], upright (LIBERO's raw render rotated by 180 degrees)",
                state_dim=STATE_DIM, state="eef pos (3), eef axis-angle (3), gripper qpos (2)",
                action_dim=ACTION_DIM, horizon=None if horizon is None else int(horizon), layout=str(layout),
                replan_steps=5, max_batch=int(max_batch), max_message_bytes=int(max_message_bytes))


def _shape_of(x) -> str:
    return f"{x.dtype} {list(x.shape)}" if isinstance(x, (np.ndarray, np.generic)) else type(x).__name__


def parse_observation(obs, image_size: int, cameras: list[str]) -> dict:
    """A request's observation, checked against what the policy expects: {camera: uint8 [S, S, 3], STATE:
    float32 [8], PROMPT: str}. Raises BadRequest naming what was expected."""
    keys = [*cameras, STATE, PROMPT]
    if not isinstance(obs, dict):
        raise BadRequest(f"expected a map with keys {', '.join(keys)}; got a {type(obs).__name__}")
    missing = [k for k in keys if k not in obs]
    if missing:
        raise BadRequest(f"missing {', '.join(missing)}: expected the keys {', '.join(keys)}")
    out = {}
    for k in cameras:
        img = obs[k]
        if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (image_size, image_size, 3)):
            raise BadRequest(f"{k} must be uint8 [{image_size}, {image_size}, 3] (upright, resized to the policy's "
                             f"input size); got {_shape_of(img)}")
        out[k] = img
    try:
        state = np.asarray(obs[STATE], dtype=np.float32)       # an array or a list of numbers
    except (TypeError, ValueError):
        state = None
    expected = f"{STATE} must be {STATE_DIM} finite numbers (eef pos 3, eef axis-angle 3, gripper qpos 2)"
    if state is None or state.shape != (STATE_DIM,):
        raise BadRequest(f"{expected}; got {_shape_of(obs[STATE])}")
    if not np.isfinite(state).all():
        raise BadRequest(f"{expected}; got {state.tolist()}")
    prompt = obs[PROMPT]
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        got = f"{len(prompt)} characters" if isinstance(prompt, str) else _shape_of(prompt)
        raise BadRequest(f"{PROMPT} must be the instruction, a non-empty string of at most {MAX_PROMPT_CHARS} "
                         f"characters; got {got}")
    return {**out, STATE: state, PROMPT: prompt}


def _healthz(connection, request):
    """GET /healthz answers OK (load balancers, scripts waiting for the server); any other path is the websocket."""
    return connection.respond(http.HTTPStatus.OK, "OK\n") if request.path == "/healthz" else None


# ----------------------------------------------------------------------------- the server
@dataclass
class Request:
    obs: dict
    reply: asyncio.Future                  # set to the reply frame (bytes, or str for an error); cancelled if the client left
    t0: float                              # arrival, for queue_ms


class PolicyServer:
    """The openpi websocket protocol in front of one policy. `start()` runs it on a background thread and returns
    the port (tests, eval_libero.py --workers); `serve_forever()` runs it on this one (the command line)."""

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 0, max_batch: int = 8, max_wait_ms: float = 5.0,
                 max_message_bytes: int = 16 << 20):
        if max_batch < 1 or max_wait_ms < 0 or max_message_bytes < 1:
            fail("--max-batch and --max-message-mb must be > 0, --max-wait-ms >= 0")
        self.policy, self.host, self.port = policy, host, port
        self.max_batch, self.max_wait_s, self.max_message_bytes = max_batch, max_wait_ms / 1000, max_message_bytes
        self.metadata = describe_policy(policy, max_batch, max_message_bytes)
        self.connections = 0               # open websocket connections
        self.in_flight = 0                 # requests checked and queued, not yet answered nor dropped
        self.batch_sizes = deque(maxlen=10_000)   # of the forward passes run (tests, bench)
        self._waiting, self._loop, self._thread, self._error = deque(), None, None, None
        # one forward pass at a time, off the event loop: the loop keeps reading requests while the policy runs
        self._forward_pool = ThreadPoolExecutor(1, thread_name_prefix="serve-forward")

    # -- running
    def serve_forever(self, on_ready=None) -> None:
        try:
            asyncio.run(self._main(on_ready))
        except KeyboardInterrupt:
            pass

    def start(self) -> int:
        ready = threading.Event()

        def run():
            try:
                asyncio.run(self._main(ready.set))
            except BaseException as e:     # e.g. the port is taken: start() re-raises it in the caller
                self._error = e
                ready.set()
        self._thread = threading.Thread(target=run, name="serve.py", daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise self._error
        return self.port

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=30)
        self._forward_pool.shutdown(wait=False)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    async def _main(self, on_ready) -> None:
        self._loop, self._stopping, self._arrived = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        batcher = asyncio.create_task(self._batcher())
        async with ws_serve(self._handler, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                            process_request=_healthz) as server:
            self.port = server.sockets[0].getsockname()[1]
            if on_ready:
                on_ready()
            await self._stopping.wait()
        batcher.cancel()

    # -- one connection
    async def _handler(self, ws) -> None:
        self.connections += 1
        try:
            await ws.send(pack(self.metadata))
            async for message in ws:                  # ends when the client closes the connection
                reply = await self._answer(ws, message)
                if reply is None:                     # the client left while its request waited
                    return
                await ws.send(reply)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.connections -= 1

    async def _answer(self, ws, message) -> bytes | str | None:
        t0 = time.perf_counter()
        try:
            if isinstance(message, str):
                raise BadRequest("expected a binary frame holding a msgpack map (openpi_client.msgpack_numpy); got a text frame")
            obs = parse_observation(unpack(message), self.metadata["image_size"], self.metadata["cameras"])
        except BadRequest as e:
            return f"serve.py: bad request: {e}"
        req = Request(obs, self._loop.create_future(), t0)
        self.in_flight += 1
        req.reply.add_done_callback(self._settled)
        self._waiting.append(req)
        self._arrived.set()
        gone = asyncio.ensure_future(ws.wait_closed())
        try:
            await asyncio.wait([req.reply, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not req.reply.done():                      # the client left: the batcher skips a cancelled request
            req.reply.cancel()
            return None
        return req.reply.result()

    def _settled(self, _fut) -> None:
        self.in_flight -= 1

    # -- batching
    async def _batcher(self) -> None:
        loop = self._loop
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait_s
            while len(self._waiting) < self.max_batch and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
            batch = [r for r in batch if not r.reply.done()]          # cancelled: their clients left
            if not batch:
                continue
            t = time.perf_counter()
            try:
                chunks = await loop.run_in_executor(self._forward_pool, self._forward, [r.obs for r in batch])
                infer_ms = (time.perf_counter() - t) * 1000
                replies = [pack({"actions": c, "server_timing": {"infer_ms": infer_ms, "queue_ms": (t - r.t0) * 1000,
                                                                 "batch_size": len(batch)}})
                           for c, r in zip(chunks, batch)]
            except Exception:
                replies = [f"serve.py: the policy raised on a batch of {len(batch)} request(s):\n{traceback.format_exc()}"] * len(batch)
            self.batch_sizes.append(len(batch))
            for r, reply in zip(batch, replies):
                if not r.reply.done():
                    r.reply.set_result(reply)

    def _forward(self, batch: list[dict]) -> np.ndarray:
        cams = self.metadata["cameras"]
        stack = lambda k: np.stack([o[k] for o in batch]) if k in cams else None
        out = np.asarray(self.policy(stack(IMAGE), stack(WRIST), np.stack([o[STATE] for o in batch]),
                                     [o[PROMPT] for o in batch]), dtype=np.float32)
        if out.ndim != 3 or out.shape[0] != len(batch) or out.shape[2] != ACTION_DIM:
            raise ValueError(f"the policy returned shape {out.shape}, expected [{len(batch)}, H, {ACTION_DIM}]")
        return out


# ----------------------------------------------------------------------------- the client
class WebsocketPolicy:
    """A policy served at ws://HOST:PORT (by serve.py or any server speaking openpi's protocol), usable wherever
    eval_libero.py takes a policy. The rows of one call go out together, one connection each, so the server can
    answer them with one forward pass; an error reply raises RuntimeError with the server's text."""

    def __init__(self, url: str, timeout: float = 300.0):
        self.url, self.timeout, self._conns = url, timeout, []
        conn, self.metadata = self._open()
        self._conns.append(conn)
        md = self.metadata
        # a server that says nothing about itself: openpi's LIBERO convention, 224 px and both cameras
        self.image_size = int(md.get("image_size", 224))
        cameras = md.get("cameras", [IMAGE, WRIST])
        self.uses_images, self.uses_wrist = bool(cameras), WRIST in cameras
        self.horizon = md.get("horizon")
        layout = md.get("layout", "unknown")       # what the served checkpoint was trained on, for checks upstream
        self.layout = None if layout == "unknown" else layout

    def _open(self):
        try:
            conn = ws_connect(self.url, compression=None, max_size=None, open_timeout=10, legacy=True)  # kept open
        except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as e:
            raise ConnectionError(f"cannot connect to a policy server at {self.url} ({type(e).__name__}: {e}); "
                                  f"start one with: python serve.py --policy DIR --port PORT") from None
        first = conn.recv(timeout=self.timeout)
        if isinstance(first, str):
            conn.close()
            raise ConnectionError(f"policy server {self.url} sent an error instead of its metadata: {first}")
        return conn, unpack(first)

    def __call__(self, images, wrist_images, proprio, instructions) -> np.ndarray:
        n = len(instructions)
        try:
            while len(self._conns) < n:
                self._conns.append(self._open()[0])
            for i, conn in enumerate(self._conns[:n]):
                obs = {STATE: np.asarray(proprio[i], np.float32), PROMPT: instructions[i]}
                if images is not None and self.uses_images:
                    obs[IMAGE] = np.asarray(images[i])
                if wrist_images is not None and self.uses_wrist:
                    obs[WRIST] = np.asarray(wrist_images[i])
                conn.send(pack(obs))
            replies = [conn.recv(timeout=self.timeout) for conn in self._conns[:n]]
        except BaseException:
            self.close()           # replies may still be in flight: the next call starts on fresh connections
            raise
        errors = [r for r in replies if isinstance(r, str)]
        if errors:
            raise RuntimeError(f"policy server {self.url}: {errors[0]}")
        return np.stack([unpack(r)["actions"] for r in replies]).astype(np.float32)

    def close(self) -> None:
        for conn in self._conns:
            conn.close()
        self._conns = []


# ----------------------------------------------------------------------------- the command line
def load_checkpoint(path: str, device: str = "auto", seed: int = 7):
    if not os.path.isfile(os.path.join(path, "vla_config.json")):
        fail(f"--policy {path!r} is not a VLA checkpoint dir (expected vla_config.json, as vla_train.py writes)")
    import torch
    from vla_train import Policy          # imported here: clients and tests with a fake policy need no torch
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    torch.manual_seed(seed)
    return Policy.load(path, device)


@exits_on_bad_files("serve.py")
def main(cfg: Config) -> None:
    policy = load_checkpoint(cfg.policy, cfg.device, cfg.seed)
    server = PolicyServer(policy, cfg.host, cfg.port, cfg.max_batch, cfg.max_wait_ms, int(cfg.max_message_mb * 2**20))
    md = server.metadata

    def banner():
        s = md["image_size"]
        print(f"serve.py: {cfg.policy} on ws://{cfg.host}:{server.port} (GET /healthz answers OK)\n"
              f"  expects {' + '.join(md['cameras']) or 'no images'} as uint8 [{s}, {s}, 3] upright, "
              f"{STATE} [{STATE_DIM}], {PROMPT}; layout {md['layout']}\n"
              f"  replies actions [{md['horizon']}, {ACTION_DIM}]; batches up to {cfg.max_batch} requests within "
              f"{cfg.max_wait_ms:g} ms; requests up to {cfg.max_message_mb:g} MB", flush=True)
    try:
        server.serve_forever(banner)
    except OSError as e:                  # typically the port is taken
        fail(f"cannot listen on {cfg.host}:{cfg.port} ({e})")


if __name__ == "__main__":
    main(parse_config())
