"""llama.cpp's CPU speed on SmolLM2-135M-Instruct's Q4_1 GGUF, the peer of `cargo bench --bench
gguf` (pip install llama-cpp-python; the file from tests/fixtures/gguf/fetch_smollm2.sh): prompt
processing of a 64-token prompt and greedy decoding of 64 tokens, 2 threads, median of 5.

    python3 benches/llamacpp_smollm2.py [FILE.gguf]
"""
import statistics
import sys
import time

from llama_cpp import Llama

path = sys.argv[1] if len(sys.argv) > 1 else "target/models/SmolLM2-135M-Instruct.Q4_1.gguf"
llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_batch=512, verbose=False)
prompt = llm.tokenize(("The quick brown fox jumps over the lazy dog. " * 8).encode(), add_bos=False)[:64]
prefill, decode = [], []
for _ in range(5):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    prefill.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(64):
        token = llm.sample(temp=0.0)
        llm.eval([token])
    decode.append(time.perf_counter() - t)
p, d = statistics.median(prefill), statistics.median(decode)
print(f"llama.cpp (llama-cpp-python, 2 threads): prefill {64 / p:.0f} tokens/s ({p * 1e3:.1f} ms "
      f"for 64), decode {64 / d:.1f} tokens/s ({d / 64 * 1e3:.2f} ms per token)")
