"""serve.py and eval_libero.py's ws:// and --workers: the msgpack-numpy codec against openpi's own, a round trip
with the unmodified openpi-client, batching of concurrent clients, bad requests, a client that leaves mid-request,
evaluation through ws:// and over worker processes (including workers that die) matching the in-process run.
Everything talks to 127.0.0.1 on a port the OS picks; every wait is bounded."""
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("websockets", reason="pip install -r requirements-serve.txt")
pytest.importorskip("msgpack", reason="pip install -r requirements-serve.txt")
import msgpack                                                               # noqa: E402
from websockets.exceptions import ConnectionClosedError                      # noqa: E402
from websockets.sync.client import connect                                   # noqa: E402

import eval_libero as E                                                      # noqa: E402
import eval_workers as W                                                     # noqa: E402
import serve as S                                                            # noqa: E402
from conftest import ENV, ROOT                                               # noqa: E402

KEEP = ("suite", "task", "init", "seed", "success", "steps")
# openpi-client 0.1.2 calls websockets' connect() the way websockets 17 deprecates (outside a `with`); harmless
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")


def openpi_client():
    return pytest.importorskip("openpi_client.websocket_client_policy",
                               reason="pip install --no-deps openpi-client==0.1.2 (requirements-serve.txt)")


def wait_until(cond, timeout=10.0):
    """Poll `cond` (bounded): the server's counters change on its own thread."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for the server"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- fake policies
class Fake:
    """Every action a deterministic function of one row's inputs (both frames, the state, the prompt)."""
    image_size, horizon, uses_wrist = 16, 4, True

    def __init__(self):
        self.batches = []

    def __call__(self, images, wrist_images, proprio, instructions):
        self.batches.append(len(instructions))
        return np.stack([self.row(images[i], wrist_images[i], proprio[i], t) for i, t in enumerate(instructions)])

    def row(self, image, wrist, state, prompt):
        out = np.zeros((self.horizon, 7), np.float32)
        out[:, 0] = image.astype(np.float64).mean() / 255
        out[:, 1] = wrist.astype(np.float64).mean() / 255
        out[:, 2:5] = state[:3]
        out[:, 5] = np.arange(self.horizon) + state[3:].sum()
        out[:, 6] = len(prompt)
        return out


def observation(i=0, size=16):
    rng = np.random.default_rng(i)
    return {S.IMAGE: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            S.WRIST: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            S.STATE: rng.normal(size=8), "prompt": "pick up the bowl" + "!" * i}


def expected(policy, obs):
    return policy.row(obs[S.IMAGE], obs[S.WRIST], np.asarray(obs[S.STATE], np.float32), obs["prompt"])


class ObsPolicy:
    """For closed-loop runs on mini-LIBERO: moves the arm by a deterministic function of the frames, the state and
    the instruction, and keeps a digest of every row it is asked about (the same episodes ask the same things)."""
    image_size, horizon, uses_wrist = 32, 6, True

    def __init__(self):
        self.seen = []

    def __call__(self, images, wrist_images, proprio, instructions):
        out = np.zeros((len(instructions), self.horizon, 7), np.float32)
        for i, text in enumerate(instructions):
            self.seen.append(hashlib.sha1(images[i].tobytes() + wrist_images[i].tobytes() + proprio[i].tobytes()
                                          + text.encode()).hexdigest())
            phase = images[i].astype(np.float64).mean() / 9 + wrist_images[i].astype(np.float64).mean() / 13
            out[i, :, :3] = 0.8 * np.sin(phase + proprio[i][:3] * 7 + len(text) + np.arange(3))
            out[i, :, 6] = 1.0 if np.sin(phase * 3) > 0 else -1.0
        return out


@pytest.fixture
def served():
    """served(policy, **kw) -> a running PolicyServer on 127.0.0.1:<free port>; all are stopped afterwards."""
    servers = []

    def start(policy, **kw):
        servers.append(S.PolicyServer(policy, **kw))
        servers[-1].start()
        return servers[-1]
    yield start
    for s in servers:
        s.stop()


# ----------------------------------------------------------------------------- the codec
def test_codec_matches_openpis_msgpack_numpy_both_ways():
    mn = pytest.importorskip("openpi_client.msgpack_numpy")
    obj = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([True, False]), "c": np.int64(-3),
           "d": np.zeros((2, 0, 3), np.uint8), "e": [1, "x", {"f": np.float16(0.5)}], "g": np.arange(6)[::2]}
    for decoded in (mn.unpackb(S.pack(obj)), S.unpack(mn.packb(obj))):
        for k in ("a", "b", "d", "g"):
            assert decoded[k].dtype == obj[k].dtype and np.array_equal(decoded[k], obj[k])
        assert decoded["c"] == -3 and decoded["c"].dtype == np.int64
        assert decoded["e"][:2] == [1, "x"] and decoded["e"][2]["f"].dtype == np.float16


@pytest.mark.parametrize("payload, msg", [
    ({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}, "dtype '|O' refused"),
    ({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}, "needs 8 bytes of data, got 7"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}, "malformed array"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "nonsense", b"shape": [0]}, "dtype 'nonsense' refused"),
    ({b"__npgeneric__": True, b"data": [1, 2], b"dtype": "<f4"}, "malformed numpy scalar"),
])
def test_codec_refuses_arrays_it_cannot_decode_safely(payload, msg):
    with pytest.raises(S.BadRequest, match=re.escape(msg)):
        S.unpack(msgpack.packb({"x": payload}))


def test_codec_names_malformed_messages_and_refuses_to_send_object_arrays():
    for junk in (b"\xc1", msgpack.packb({"a": 1})[:-1], msgpack.packb(1) + b"\x01", msgpack.packb({1: 2})):
        with pytest.raises(S.BadRequest, match="malformed message: expected one msgpack map"):
            S.unpack(junk)
    with pytest.raises(TypeError, match="only bool, int, uint and float"):
        S.pack({"x": np.array([object()])})


# ----------------------------------------------------------------------------- what the policy expects
def test_parse_observation_accepts_openpis_libero_observation_and_names_what_is_wrong():
    obs = observation()
    out = S.parse_observation(obs, 16, [S.IMAGE, S.WRIST])
    assert out[S.STATE].dtype == np.float32 and np.allclose(out[S.STATE], obs[S.STATE])
    assert S.parse_observation({**obs, S.STATE: list(range(8))}, 16, [S.IMAGE, S.WRIST])[S.STATE][7] == 7
    assert S.WRIST not in S.parse_observation({k: v for k, v in obs.items() if k != S.WRIST}, 16, [S.IMAGE])
    bad = [({**obs, S.IMAGE: obs[S.IMAGE][:8]}, "observation/image must be uint8 [16, 16, 3]"),
           ({**obs, S.WRIST: obs[S.WRIST].astype(np.float32)}, "got float32 [16, 16, 3]"),
           ({k: v for k, v in obs.items() if k != "prompt"}, "missing prompt"),
           ({**obs, S.STATE: np.zeros(7)}, "must be 8 finite numbers"),
           ({**obs, S.STATE: np.array([0, 0, 0, np.inf, 0, 0, 0, 0])}, "got [0.0, 0.0, 0.0, inf, 0.0"),
           ({**obs, S.STATE: "eight"}, "got str"),
           ({**obs, "prompt": ""}, "non-empty string"),
           ({**obs, "prompt": "x" * (S.MAX_PROMPT_CHARS + 1)}, "at most 4096 characters"),
           ([1, 2], "expected a map with keys observation/image")]
    for o, msg in bad:
        with pytest.raises(S.BadRequest, match=re.escape(msg)):
            S.parse_observation(o, 16, [S.IMAGE, S.WRIST])


def test_metadata_says_what_the_policy_was_trained_on():
    class NoWrist(Fake):
        uses_wrist, vcfg = False, {"layout": "libero-upright"}
    md = S.describe_policy(NoWrist(), max_batch=4)
    assert md["cameras"] == [S.IMAGE] and md["image_size"] == 16 and md["horizon"] == 4
    assert md["layout"] == "libero-upright" and md["state_dim"] == 8 and md["max_batch"] == 4
    assert S.describe_policy(Fake())["layout"] == "unknown"
    assert S.describe_policy(Fake())["cameras"] == [S.IMAGE, S.WRIST]


# ----------------------------------------------------------------------------- the server with openpi's client
def test_round_trip_with_the_openpi_client(served):
    wcp = openpi_client()
    policy = Fake()
    server = served(policy)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
        assert r.status == 200 and r.read() == b"OK\n"
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    md = client.get_server_metadata()
    assert md["image_size"] == 16 and md["horizon"] == 4 and md["cameras"] == [S.IMAGE, S.WRIST]
    for i in range(3):
        obs = observation(i)
        reply = client.infer({**obs, "extra/key": "ignored"})
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (4, 7)
        np.testing.assert_array_equal(reply["actions"], expected(policy, obs))
        assert reply["server_timing"]["batch_size"] == 1 and reply["server_timing"]["infer_ms"] >= 0


def test_concurrent_clients_get_their_own_answers_from_one_batched_forward_pass(served):
    wcp = openpi_client()
    n, entered, gate = 6, threading.Event(), threading.Event()

    class Gated(Fake):                 # the first pass waits until every other request is queued behind it
        def __call__(self, *a):
            if not self.batches:
                entered.set()
                gate.wait(timeout=30)
            return super().__call__(*a)
    policy = Gated()
    server = served(policy, max_batch=8, max_wait_ms=1)
    clients = [wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port) for _ in range(n)]
    replies = [None] * n

    def ask(i):
        replies[i] = clients[i].infer(observation(i))
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    threads[0].start()
    assert entered.wait(timeout=30)                           # client 0's request alone is in the policy
    for t in threads[1:]:
        t.start()
    wait_until(lambda: server.in_flight == n)
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert policy.batches == [1, n - 1]                       # the n - 1 that waited went through together
    for i in range(n):
        np.testing.assert_array_equal(replies[i]["actions"], expected(policy, observation(i)))
    assert sorted(r["server_timing"]["batch_size"] for r in replies) == [1] + [n - 1] * (n - 1)


def test_bad_requests_get_an_error_frame_and_the_server_keeps_serving(served):
    policy = Fake()
    server = served(policy, max_message_bytes=50_000)
    url = f"ws://127.0.0.1:{server.port}"
    good = S.pack(observation())
    with connect(url, compression=None) as ws:
        assert S.unpack(ws.recv())["image_size"] == 16
        for frame, msg in [("hello", "expected a binary frame"),
                           (b"\xc1\x00", "malformed message"),
                           (S.pack([1, 2, 3]), "expected a map with keys"),
                           (S.pack({**observation(), S.IMAGE: np.zeros((32, 32, 3), np.uint8)}), "uint8 [16, 16, 3]"),
                           (S.pack({k: v for k, v in observation().items() if k != S.STATE}), "missing observation/state"),
                           (S.pack({**observation(), S.STATE: np.full(8, np.nan)}), "8 finite numbers"),
                           (msgpack.packb({**{k: 0 for k in observation()}, S.IMAGE: {b"__ndarray__": True, b"data": b"",
                            b"dtype": "|O", b"shape": [0]}}), "refused")]:
            ws.send(frame)
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("serve.py: bad request: ") and msg in reply
            assert "\n" not in reply                                  # one line, naming what was expected
        ws.send(good)                                                 # the same connection still answers
        np.testing.assert_array_equal(S.unpack(ws.recv(timeout=10))["actions"], expected(policy, observation()))
        ws.send(b"\0" * 60_000)                                       # over the limit: refused unread
        with pytest.raises(ConnectionClosedError) as e:
            ws.recv(timeout=10)
        assert e.value.rcvd.code == 1009 and "exceeds limit of 50000 bytes" in e.value.rcvd.reason
    assert policy.batches == [1]                                      # no bad request reached the policy
    with connect(url, compression=None) as ws:                        # a new client is served as before
        ws.recv(timeout=10)
        ws.send(good)
        assert not isinstance(ws.recv(timeout=10), str)


def test_a_policy_that_raises_sends_its_traceback_and_the_server_survives(served):
    wcp = openpi_client()

    class Flaky(Fake):
        def __call__(self, images, wrist_images, proprio, instructions):
            if "boom" in instructions[0]:
                raise RuntimeError("the head exploded")
            return super().__call__(images, wrist_images, proprio, instructions)
    server = served(Flaky())
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    with pytest.raises(RuntimeError, match="(?s)the policy raised.*Traceback.*RuntimeError: the head exploded"):
        client.infer({**observation(), "prompt": "boom"})
    assert client.infer(observation())["actions"].shape == (4, 7)


def test_a_client_that_leaves_mid_request_leaves_nothing_behind(served):
    gate = threading.Event()

    class Gated(Fake):
        def __call__(self, *a):
            gate.wait(timeout=30)
            return super().__call__(*a)
    policy = Gated()
    server = served(policy, max_wait_ms=0)
    url = f"ws://127.0.0.1:{server.port}"
    stay, leave = connect(url, compression=None, legacy=True), connect(url, compression=None, legacy=True)
    stay.recv(timeout=10); leave.recv(timeout=10)
    stay.send(S.pack(observation(0)))
    wait_until(lambda: server.in_flight == 1 and not server._waiting)   # its forward pass is running (gated)
    leave.send(S.pack(observation(1)))
    wait_until(lambda: server.in_flight == 2)
    leave.close()                                                       # gone while its request waits
    wait_until(lambda: server.in_flight == 1 and server.connections == 1)
    gate.set()
    np.testing.assert_array_equal(S.unpack(stay.recv(timeout=10))["actions"], expected(policy, observation(0)))
    stay.close()
    wait_until(lambda: server.connections == 0 and server.in_flight == 0 and not server._waiting)
    assert policy.batches == [1]                                        # the abandoned request never ran


# ----------------------------------------------------------------------------- the eval client
def test_websocket_policy_batches_a_call_and_recovers_after_an_error(served):
    policy = Fake()
    server = served(policy)
    client = S.WebsocketPolicy(f"ws://127.0.0.1:{server.port}")
    assert (client.image_size, client.horizon, client.uses_wrist, client.uses_images) == (16, 4, True, True)
    assert client.layout is None                         # the server says "unknown": eval then uses its default
    obs = [observation(i) for i in range(3)]
    stack = lambda k: np.stack([o[k] for o in obs])
    out = client(stack(S.IMAGE), stack(S.WRIST), stack(S.STATE).astype(np.float32), [o["prompt"] for o in obs])
    np.testing.assert_array_equal(out, np.stack([expected(policy, o) for o in obs]))
    with pytest.raises(RuntimeError, match="bad request: observation/state must be 8 finite numbers"):
        client(stack(S.IMAGE), stack(S.WRIST), np.full((3, 8), np.nan, np.float32), ["a", "b", "c"])
    out = client(stack(S.IMAGE)[:2], stack(S.WRIST)[:2], stack(S.STATE)[:2].astype(np.float32), ["a", "b"])
    assert out.shape == (2, 4, 7)
    client.close()


def cfg(tmp_path, name, *argv):
    return E.parse_config(["--out", str(tmp_path / name), "--suite", "spatial", "--tasks", "0,1",
                           "--trials-per-task", "2", "--max-steps", "24", "--num-envs", "2", *argv])


def episodes(c) -> list[tuple]:
    with open(os.path.join(c.out, "episodes.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    assert len({E.ep_key(r) for r in recs}) == len(recs)                # no episode logged twice
    return sorted(tuple(r[k] for k in KEEP) for r in recs)


def test_eval_through_ws_matches_in_process(tmp_path, served):
    local, remote = ObsPolicy(), ObsPolicy()
    E.run_eval(cfg(tmp_path, "local"), policy=local)
    server = served(remote)
    c = cfg(tmp_path, "ws", "--policy", f"ws://127.0.0.1:{server.port}")
    res = E.run_eval(c)
    assert episodes(c) == episodes(cfg(tmp_path, "local")) and len(episodes(c)) == 4
    assert sorted(remote.seen) == sorted(local.seen) and len(set(local.seen)) > 8   # the same frames, states, prompts
    with open(os.path.join(c.out, "episodes.jsonl")) as f:
        assert res["render_size"] == 32 and all(json.loads(line)["policy"] == c.policy for line in f)


def test_an_unreachable_server_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="^eval_libero.py: --policy ws://127.0.0.1:1: cannot connect") as e:
        E.run_eval(cfg(tmp_path, "x", "--policy", "ws://127.0.0.1:1"))
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- --workers
def test_plan_units_cuts_tasks_so_every_worker_gets_a_share():
    eps = [dict(suite="spatial", task=t, init=k, seed=7) for t in (0, 1) for k in range(5)]
    units = W.plan_units(eps, 2)
    assert [[(e["task"], e["init"]) for e in u] for u in units] == [[(0, k) for k in range(5)], [(1, k) for k in range(5)]]
    assert [len(u) for u in W.plan_units(eps[:5], 2)] == [3, 2]
    assert [len(u) for u in W.plan_units(eps, 8)] == [2, 2, 1, 2, 2, 1]
    assert [e for u in W.plan_units(eps, 3) for e in u] == eps                       # each once, in order


def test_two_workers_match_one_for_the_expert(tmp_path):
    one = cfg(tmp_path, "one", "--policy", "expert", "--max-steps", "0")         # the suite's own step budget
    two = cfg(tmp_path, "two", "--policy", "expert", "--max-steps", "0", "--workers", "2")
    assert E.run_eval(one)["suites"] == E.run_eval(two)["suites"]
    assert episodes(one) == episodes(two) and sum(e[4] for e in episodes(one)) == 4     # the expert succeeds


def test_two_workers_match_one_for_a_served_policy_and_resume(tmp_path):
    local, pooled = ObsPolicy(), ObsPolicy()
    E.run_eval(cfg(tmp_path, "one"), policy=local)
    two = cfg(tmp_path, "two", "--workers", "2", "--video")
    res = E.run_eval(two, policy=pooled)
    assert episodes(two) == episodes(cfg(tmp_path, "one")) and sorted(pooled.seen) == sorted(local.seen)
    assert res["render_size"] == 32 and len(os.listdir(os.path.join(two.out, "videos"))) == 4
    with open(os.path.join(two.out, "metrics.json")) as f:
        m = json.load(f)
    steps = sum(e[5] for e in episodes(two))
    assert m["workers"] == 2 and m["episodes_this_run"] == 4 and m["env_steps_this_run"] == 4 * 10 + steps
    with open(os.path.join(two.out, "episodes.jsonl")) as f:                          # keep 1, resume the rest
        first = f.readline()
    with open(os.path.join(two.out, "episodes.jsonl"), "w") as f:
        f.write(first)
    two.resume, again = True, ObsPolicy()
    E.run_eval(two, policy=again)
    assert episodes(two) == episodes(cfg(tmp_path, "one"))
    with open(os.path.join(two.out, "metrics.json")) as f:
        assert json.load(f)["episodes_this_run"] == 3


# Worker entry points for the crash tests: spawned processes import them from this module by name.
class CrashOn:
    """Wraps a policy; the process dies (no exception, no cleanup) when asked about `instruction`, every time
    or only while `marker` does not exist yet."""
    def __init__(self, policy, instruction, marker, every_time):
        self.policy, self.instruction, self.marker, self.every_time = policy, instruction, marker, every_time

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def __call__(self, *args, **kw):
        if self.instruction in args[3] and (self.every_time or not os.path.exists(self.marker)):
            open(self.marker, "w").close()
            os._exit(3)
        return self.policy(*args, **kw)


def _crashing_worker(k, cfg, url, conn, log_path, every_time):
    load = W.load_policy
    task1 = E.MiniBackend().instruction("spatial", 1)
    W.load_policy = lambda c: CrashOn(load(c), task1, os.path.join(cfg["out"], "crashed"), every_time)
    W.eval_worker(k, cfg, url, conn, log_path)


def crash_once_worker(*args):
    _crashing_worker(*args, every_time=False)


def crash_always_worker(*args):
    _crashing_worker(*args, every_time=True)


def exit_at_start_worker(*args):
    os._exit(5)


def test_a_worker_that_dies_is_replaced_and_its_episodes_run_once_more(tmp_path):
    one = cfg(tmp_path, "one", "--policy", "expert")
    E.run_eval(one)
    two = cfg(tmp_path, "two", "--policy", "expert", "--workers", "2")
    W.run_workers(two, worker=crash_once_worker)
    assert os.path.exists(os.path.join(two.out, "crashed"))                     # it did die once
    assert episodes(two) == episodes(one)


def test_episodes_that_kill_their_worker_twice_are_logged_as_errors(tmp_path):
    one = cfg(tmp_path, "one", "--policy", "expert")
    E.run_eval(one)
    two = cfg(tmp_path, "two", "--policy", "expert", "--workers", "2")
    res = W.run_workers(two, worker=crash_always_worker)
    with open(os.path.join(two.out, "episodes.jsonl")) as f:
        recs = {(r["task"], r["init"]): r for r in map(json.loads, f)}
    assert len(recs) == 4 and len(episodes(two)) == 4                           # every episode once
    assert all("died twice" in recs[1, k]["error"] and not recs[1, k]["success"] for k in range(2))
    assert [e for e in episodes(two) if e[1] == 0] == [e for e in episodes(one) if e[1] == 0]
    assert res["suites"]["spatial"]["n"] == 4


def test_workers_below_one_are_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="^eval_libero.py: --workers must be >= 1$"):
        E.run_eval(cfg(tmp_path, "x", "--workers", "0"))


def test_workers_that_cannot_start_are_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="keep exiting before they finish a unit .*exit code 5") as e:
        W.run_workers(cfg(tmp_path, "x", "--policy", "expert", "--workers", "2"), worker=exit_at_start_worker)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the command line and a real (tiny) VLA
def test_cli_help_and_a_directory_that_is_no_checkpoint(tmp_path):
    p = subprocess.run([sys.executable, "serve.py", "--help"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and all(f in p.stdout for f in ("--policy", "--port", "--max-batch", "--max-wait-ms"))
    p = subprocess.run([sys.executable, "serve.py", "--policy", str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip() == (f"serve.py: --policy {str(tmp_path)!r} is not a VLA checkpoint "
                                                      "dir (expected vla_config.json, as vla_train.py writes)")


@pytest.mark.slow
def test_serve_py_serves_a_checkpoint_to_the_openpi_client(tiny_vla):
    wcp = openpi_client()
    p = subprocess.Popen([sys.executable, "serve.py", "--policy", tiny_vla, "--host", "127.0.0.1", "--port", "0"],
                         cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = p.stdout.readline()                    # printed once it listens; the port the OS chose
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)", banner).group(1))
        assert "layout libero" in p.stdout.readline() + p.stdout.readline()
        client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=port)
        s = client.get_server_metadata()["image_size"]
        actions = client.infer({**observation(0, size=s), "prompt": "open the drawer"})["actions"]
        assert actions.shape == (client.get_server_metadata()["horizon"], 7) and np.isfinite(actions).all()
    finally:
        p.terminate()
        p.wait(timeout=30)


@pytest.mark.slow
def test_a_tiny_vla_served_to_the_openpi_client_answers_as_in_process(tiny_vla, served):
    wcp = openpi_client()
    import torch
    from vla_train import Policy
    policy = Policy.load(tiny_vla)
    server = served(policy)
    client = wcp.WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    md = client.get_server_metadata()
    s = policy.image_size
    assert (md["image_size"], md["horizon"], md["layout"]) == (s, policy.horizon, "libero")
    assert md["cameras"] == ([S.IMAGE, S.WRIST] if policy.uses_wrist else [S.IMAGE])
    obs = {**observation(3, size=s), "prompt": "put the bowl on the plate"}
    torch.manual_seed(0)                      # the head samples noise from the global generator
    local = policy(obs[S.IMAGE][None], obs[S.WRIST][None], obs[S.STATE][None].astype(np.float32), [obs["prompt"]])[0]
    torch.manual_seed(0)
    remote = client.infer(obs)["actions"]
    assert remote.shape == (policy.horizon, 7) and set(np.unique(remote[:, 6])) <= {-1.0, 1.0}
    np.testing.assert_allclose(remote, local, atol=1e-5)
