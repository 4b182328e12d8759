import numpy as np
import pandas as pd

from analyses import complete_tasks


def test_complete_tasks_drops_the_tasks_with_most_nans_first():
    m = np.ones((4, 4))
    # c misses every pair (3 NaNs), a-d is missing too: drop c, then a (tie a/d: first).
    for i, j in [(2, 0), (2, 1), (2, 3), (0, 3)]:
        m[i, j] = m[j, i] = np.nan
    assert complete_tasks(m, list("abcd")) == ["b", "d"]
    # A NaN in one triangle only counts for both tasks; the diagonal never counts.
    frame = pd.DataFrame(np.ones((3, 3)), index=list("xyz"), columns=list("xyz"))
    frame.loc["y", "z"] = np.nan
    frame.loc["x", "x"] = np.nan
    assert complete_tasks(frame) == ["x", "z"]
    assert complete_tasks(np.ones((2, 2))) == ["0", "1"]
