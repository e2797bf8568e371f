"""The README's first example runs as printed and says what it prints."""

import os
import re
import subprocess
import sys

from tests.helpers import ROOT


def first_example():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## A first example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    claimed = re.search(r"It prints `(.*?)`", section).group(1)
    return code, claimed


def test_first_example_prints_what_the_readme_says(tmp_path):
    code, claimed = first_example()
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = [float(x) for x in re.findall(r"-?\d+\.\d+", proc.stdout)]
    mean, scale, exact_mean, exact_scale = map(float, re.findall(r"-?\d+\.\d+", claimed))
    # the data and so the exact posterior are the same everywhere; the fit may
    # differ in the last digit with another torch build's rounding
    assert got[2:] == [exact_mean, exact_scale], proc.stdout
    assert abs(got[0] - mean) < 0.01 and abs(got[1] - scale) < 0.01, proc.stdout
    # and the fit is close to the exact posterior: the mean within a tenth of
    # a posterior standard deviation, the scale within 15%
    assert abs(mean - exact_mean) < 0.1 * exact_scale and abs(scale / exact_scale - 1) < 0.15
