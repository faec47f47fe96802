"""Run easel's benchmark from a checkout: `python benchmarks/bench.py [easel bench options]`.

The measuring code lives in easel.bench (so `easel bench` and this script measure the same
thing); this script only exists so the benchmark can be found where benchmarks usually are.
"""

from easel.cli import app

if __name__ == "__main__":
    app(["bench", *__import__("sys").argv[1:]])
