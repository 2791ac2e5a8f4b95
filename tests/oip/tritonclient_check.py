"""wgnn-serve checked with a client nobody here wrote: the HTTP client of NVIDIA's `tritonclient`
package (pip install "tritonclient[http]"). Reads the server's and the model's metadata and
configuration, runs `infer` on the digits model as the client's documentation shows (everything at
its defaults: binary tensors both ways) and with JSON tensors (`binary_data=False`), and compares
both answers with the in-process one that `cargo run --example predict_json` wrote.

    python3 tests/oip/tritonclient_check.py URL MODEL EXPECTED.json
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient

url, model, expected_path = sys.argv[1:4]
expected = json.load(open(expected_path))
client = httpclient.InferenceServerClient(url=url)

assert client.is_server_live(), "not live"
assert client.is_server_ready(), "not ready"
assert client.is_model_ready(model), f"{model} not ready"
server = client.get_server_metadata()
assert server["name"] == "wgnn", server
meta = client.get_model_metadata(model)
assert meta["name"] == model, meta
shape = expected["shape"]
assert meta["inputs"][0]["shape"][1:] == shape[1:], (meta, shape)

x = np.asarray(expected["inputs"], dtype=np.float32).reshape(shape)
want = np.asarray(expected["probabilities"], dtype=np.float32).reshape(shape[0], -1)


def check(result, how):
    probabilities = result.as_numpy("probabilities")
    classes = result.as_numpy("classes")
    error = float(np.max(np.abs(probabilities - want)))
    assert error < 1e-5, f"{how}: probabilities differ by {error}"
    assert classes.tolist() == expected["classes"], (how, classes, expected["classes"])
    return error


# As the documentation shows: the client's defaults (binary input, binary outputs).
inp = httpclient.InferInput(meta["inputs"][0]["name"], shape, "FP32")
inp.set_data_from_numpy(x)
binary_error = check(client.infer(model, [inp]), "binary tensors (the defaults)")

# JSON tensors both ways.
inp = httpclient.InferInput(meta["inputs"][0]["name"], shape, "FP32")
inp.set_data_from_numpy(x, binary_data=False)
outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=False),
           httpclient.InferRequestedOutput("classes", binary_data=False)]
result = client.infer(model, [inp], outputs=outputs, request_id="tritonclient-1")
error = check(result, "JSON tensors")
assert result.get_response()["id"] == "tritonclient-1"

config = client.get_model_config(model)
assert config["name"] == model, config
assert config["max_batch_size"] >= 1, config
assert config["input"][0]["dims"] == shape[1:], (config, shape)

# A wrong shape is refused with the protocol's error, which the client raises.
bad = httpclient.InferInput(meta["inputs"][0]["name"], [1, 3], "FP32")
bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32), binary_data=False)
try:
    client.infer(model, [bad])
    raise SystemExit("a wrong shape was answered")
except httpclient.InferenceServerException as e:
    assert "shape" in str(e), e
print(f"tritonclient: metadata, config, infer on {shape[0]} images with binary tensors (max "
      f"probability error {binary_error:.1e}) and JSON tensors ({error:.1e}), and a refused "
      "shape: ok")
