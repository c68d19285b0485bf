"""logist's benchmarks: each measure of issue 8 against its hand-written baseline.

Run ``python -m benchmarks`` (or ``scripts/bench.sh``) from the repository root with the venv's
python. Every measure runs with the real Docker engine; logist and its baseline alternate
(A B, B A, ...) for several repetitions and the medians are compared with the target.
Benchmarks are not tests: nothing here is run by pytest and no test asserts a timing.
"""
