"""The whole life of a fine-tuning job through the official `openai` package, pointed at fpt.

Run by tests/openai_sdk.rs against a server on loopback: `python openai_sdk.py <base_url> <key>`.
Every response is validated against the SDK's own types (`_strict_response_validation=True`), and
nothing is retried (`max_retries=0`), so a missing field or a wrong status fails here.
"""
import json
import random
import sys
import time

import http.server
import threading
import urllib.error
import urllib.request

import openai
from openai.types.fine_tuning import FineTuningJob

base_url, key, hook_port, hook_secret = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, _strict_response_validation=True)
# The SDK's status literal has no `paused` (OpenAI's own pause example returns it): pausing is
# checked with validation off.
lenient = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)


# The webhook endpoint the server was started with: records every delivery, and turns the very
# first one away (503) so that its retry is seen.
received = []


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        first = not received
        received.append((dict(self.headers), body, first))
        self.send_response(503 if first else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


threading.Thread(target=http.server.HTTPServer(("127.0.0.1", hook_port), Hook).serve_forever, daemon=True).start()


def records(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = [[rng.uniform(-1, 1), rng.uniform(-1, 1)] for _ in range(4)]
        out.append({"input": x, "label": int(sum(v[0] for v in x) > 0)})
    return "".join(json.dumps(r) + "\n" for r in out).encode()


def wait(job_id, done, limit=300):
    start = time.time()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in done:
            return job
        assert time.time() - start < limit, f"{job_id} still {job.status}"
        time.sleep(0.2)


# Files: create, wait, list by purpose, retrieve, content.
data = records(48, 0)
f = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
assert f.object == "file" and f.purpose == "fine-tune" and f.bytes == len(data), f
assert client.files.wait_for_processing(f.id).status == "processed"
assert f.id in [x.id for x in client.files.list(purpose="fine-tune")]
assert client.files.list(purpose="batch").data == []
assert client.files.retrieve(f.id).filename == "train.jsonl"
assert client.files.content(f.id).read() == data

# A job with no task (inferred from the file), OpenAI's hyperparameters, metadata and a suffix.
job = client.fine_tuning.jobs.create(
    model="tiny-gpt2",
    training_file=f.id,
    hyperparameters={"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 2},
    suffix="sdk-run",
    metadata={"team": "a"},
    seed=3,
)
assert job.status in ("validating_files", "queued", "running"), job.status
assert job.method.type == "supervised" and job.method.supervised.hyperparameters.n_epochs == 2
assert job.hyperparameters.batch_size == 8 and abs(job.hyperparameters.learning_rate_multiplier - 2) < 1e-9
assert job.training_file == f.id and job.seed == 3 and job.result_files == []
extra = job.model_extra
assert extra["task"]["type"] == "sequence_classification" and extra["inferred"]["task"] is True, extra

# Another through `method`, every value "auto": resolved by the written rules (the learning rate
# by a search) and recorded.
auto = client.fine_tuning.jobs.create(
    model="tiny-gpt2",
    training_file=f.id,
    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "auto", "batch_size": "auto",
                                                                       "learning_rate_multiplier": "auto"}}},
    metadata={"team": "b"},
)
# 48 samples in the recipe's batches of 16: 3 steps an epoch, so 667 epochs would make the
# recipe's 2000 steps; capped at 100.
assert auto.hyperparameters.n_epochs == 100 and auto.hyperparameters.batch_size == 16, auto.hyperparameters
# The learning rate is searched inside the job: "auto" until the search has chosen.
assert auto.hyperparameters.learning_rate_multiplier == "auto", auto.hyperparameters
assert sorted(auto.model_extra["inferred"]["hyperparameters"]) == ["batch_size", "learning_rate_multiplier", "n_epochs"]
cancelled = client.fine_tuning.jobs.cancel(auto.id)
assert cancelled.status == "cancelled", cancelled.status

done = wait(job.id, ("succeeded", "failed", "cancelled"))
assert done.status == "succeeded", done.error
assert done.fine_tuned_model and done.finished_at and done.trained_tokens and done.trained_tokens > 0, done
# Its results file: a CSV of every metrics report, as OpenAI's.
[results] = done.result_files
assert client.files.retrieve(results).purpose == "fine-tune-results"
csv = client.files.content(results).read().decode().splitlines()
assert csv[0].startswith("step,") and "train_loss" in csv[0].split(","), csv[0]
assert len(csv) - 1 == sum(1 for e in client.fine_tuning.jobs.list_events(job.id) if e.type == "metrics"), csv

# Lists: paged one at a time by the SDK's own iteration, and filtered by metadata.
assert {job.id, auto.id} <= {j.id for j in client.fine_tuning.jobs.list(limit=1)}
assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == [job.id]
assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "c"})] == []

# A job on a generated task, which the client gave no file, names a real training file (the
# generator's description), strictly typed in the job and in every list that holds it.
bits = client.post("/fine_tuning/jobs", cast_to=FineTuningJob,
                   body={"model": "tiny-gpt2", "task": {"type": "bit_xor"}, "hyperparameters": {"n_steps": 3}})
assert bits.training_file.startswith("file-") and client.files.retrieve(bits.training_file).purpose == "fine-tune", bits
assert json.loads(client.files.content(bits.training_file).read())["object"] == "fpt.generated_dataset"
assert bits.id in {j.id for j in client.fine_tuning.jobs.list(limit=1)}

# Events, newest first, across pages of two.
job_events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))
assert len(job_events) > 3, job_events
seqs = [int(e.id.removeprefix("ftevent-")) for e in job_events]
assert seqs == sorted(seqs, reverse=True), seqs
assert any(e.type == "metrics" for e in job_events) and all(e.level in ("info", "warn", "error") for e in job_events)

checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
assert checkpoints and all(c.fine_tuning_job_id == job.id for c in checkpoints), checkpoints

# Pause and resume (validation off: `paused`), then cancel.
long = lenient.fine_tuning.jobs.create(model="tiny-gpt2", training_file=f.id, hyperparameters={"n_epochs": 1000})
assert lenient.fine_tuning.jobs.pause(long.id).status == "paused"
assert lenient.fine_tuning.jobs.resume(long.id).status in ("queued", "running")
assert client.fine_tuning.jobs.cancel(long.id).status == "cancelled"

# A state conflict is final: the SDK is told not to retry it.
try:
    client.fine_tuning.jobs.cancel(job.id)
    raise AssertionError("cancelling a finished job succeeded")
except openai.ConflictError as e:
    assert e.response.headers["x-should-retry"] == "false"
    assert e.body["code"] == "invalid_state", e.body
try:
    client.fine_tuning.jobs.retrieve("ftjob-missing")
    raise AssertionError("a missing job was found")
except openai.NotFoundError as e:
    assert e.body["code"] == "not_found"

# Batches: an input file of prediction lines (one naming a model that does not exist), run in the
# background; its output and error files answer every line once, in OpenAI's format.
model = done.fine_tuned_model
lines = [{"custom_id": f"row-{i}", "method": "POST", "url": "/v1/predictions",
          "body": {"model": model, "inputs": [json.loads(data.decode().splitlines()[i % 48])["input"]]}} for i in range(40)]
lines.append({"custom_id": "missing", "method": "POST", "url": "/v1/predictions", "body": {"model": "ft-missing", "inputs": [[[0, 0]]]}})
batch_input = "".join(json.dumps(l) + "\n" for l in lines).encode()
bf = client.files.create(file=("batch.jsonl", batch_input), purpose="batch")
assert bf.purpose == "batch"
batch = client.batches.create(input_file_id=bf.id, endpoint="/v1/predictions", completion_window="24h", metadata={"run": "1"})
assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 41, batch
start = time.time()
while batch.status not in ("completed", "failed", "cancelled", "expired"):
    assert time.time() - start < 120, batch
    time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)
assert batch.status == "completed", batch
assert (batch.request_counts.completed, batch.request_counts.failed) == (40, 1), batch.request_counts
out = [json.loads(l) for l in client.files.content(batch.output_file_id).read().decode().splitlines()]
assert [o["custom_id"] for o in out] == [f"row-{i}" for i in range(40)]
assert all(o["response"]["status_code"] == 200 and o["response"]["body"]["data"][0]["label"] in (0, 1) for o in out)
[err] = [json.loads(l) for l in client.files.content(batch.error_file_id).read().decode().splitlines()]
assert err["custom_id"] == "missing" and err["response"]["status_code"] == 404, err
assert batch.id in [b.id for b in client.batches.list()]
# A batch cancelled at once ends cancelled, with what it answered.
other = client.batches.create(input_file_id=bf.id, endpoint="/v1/predictions", completion_window="24h")
assert client.batches.cancel(other.id).status in ("cancelling", "cancelled")
start = time.time()
while (other := client.batches.retrieve(other.id)).status != "cancelled":
    assert time.time() - start < 60 and other.status == "cancelling", other
    time.sleep(0.2)
try:
    client.batches.cancel(batch.id)
    raise AssertionError("a completed batch was cancelled")
except openai.ConflictError:
    pass
# A bad line is refused at upload, naming it.
try:
    client.files.create(file=("bad.jsonl", batch_input + b'{"custom_id": "x", "method": "GET", "url": "/v1/predictions", "body": {}}\n'), purpose="batch")
    raise AssertionError("a bad batch file was taken")
except openai.UnprocessableEntityError as e:
    assert "line 42" in e.body["message"], e.body

# Models: the fine-tuned one listed, retrieved and deleted.
assert model in [m.id for m in client.models.list()]
assert client.models.retrieve(model).owned_by
assert client.models.delete(model).deleted is True

# Every error is the JSON error object, a bad query string and a bad multipart body included.
def raw(method, path, body=None, content_type=None):
    req = urllib.request.Request(base_url + path, data=body, method=method, headers={"authorization": f"Bearer {key}"})
    if content_type:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


for method, path, body, content_type in [
    ("GET", "/v1/files?limit=0", None, None),
    ("GET", "/v1/fine_tuning/jobs?limt=2", None, None),
    ("POST", "/v1/files", b"not multipart", "text/plain"),
    ("PUT", "/v1/files", b"", None),
]:
    status, headers, text = raw(method, path, body, content_type)
    assert 400 <= status < 500 and headers["content-type"].startswith("application/json"), (path, status, text)
    assert json.loads(text)["error"]["message"], text

# Webhooks: every ending arrived signed, and the SDK's own check takes it.
wanted = {("fine_tuning.job.succeeded", job.id), ("fine_tuning.job.cancelled", auto.id), ("fine_tuning.job.cancelled", long.id),
          ("batch.completed", batch.id), ("batch.cancelled", other.id)}
start = time.time()
while True:
    events = {}
    for headers, body, first in list(received):
        event = client.webhooks.unwrap(body, headers, secret=hook_secret)
        assert event.object == "event" and event.created_at > 0, event
        events.setdefault((event.type, event.data.id), []).append((headers["webhook-id"], first))
    # Taken, not only sent: the delivery turned away counts once its retry has come.
    taken = {k for k, v in events.items() if any(not first for _, first in v)}
    if wanted <= taken:
        break
    assert time.time() - start < 60, (wanted - taken, events)
    time.sleep(0.2)
# The delivery turned away came again, with the same webhook-id.
[(turned_away, _)] = [(k, v) for k, v in events.items() if any(first for _, first in v)]
assert len(events[turned_away]) == 2 and len({i for i, _ in events[turned_away]}) == 1, events[turned_away]
try:
    headers, body, _ = received[-1]
    client.webhooks.unwrap(body, headers, secret="whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB")
    raise AssertionError("a webhook verified with another secret")
except openai.InvalidWebhookSignatureError:
    pass

client.files.delete(f.id)
print(json.dumps({"jobs": 3, "events": len(job_events), "checkpoints": len(checkpoints), "webhooks": len(received)}))
