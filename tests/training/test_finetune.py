"""Fine-tuning protocols (paper 3.5, Table 1)."""

from __future__ import annotations

import numpy as np
import pytest

from i2x.core.errors import InvalidArgument
from i2x.core.finetune import PROTOCOLS, _mean_std, run_protocols, table_markdown
from i2x.core.training import TrainConfig, seeded_build, train
from i2x.data import DatasetSpec, dataset_stats, load_dataset
from i2x.models import SmallCNN

MEAN, STD = dataset_stats(DatasetSpec())


@pytest.fixture(scope="module")
def setting():
    splits = load_dataset(DatasetSpec())
    full = splits.train.subset(np.arange(0, 4000, 250))  # 16 images
    curated = full.subset(np.arange(0, 16, 2))  # 8 images
    test = splits.test.subset(np.arange(0, 1000, 50))  # 20 images, 2 per class
    model = seeded_build(lambda: SmallCNN(width=4), 0)
    states = []
    train(model, full, TrainConfig.from_preset("tiny"), mean=MEAN, std=STD, on_checkpoint=states.append)
    return full, curated, test, states[-1].state_dict


def test_protocols_repeat_with_seeds_and_aggregate(setting):
    full, curated, test, final = setting
    kwargs = dict(mean=MEAN, std=STD, protocols=("full", "curated->full"), repeats=2, lr=1e-3, batch_size=8)
    result = run_protocols(lambda: SmallCNN(width=4), final, full, curated, test, (2, 7), **kwargs)
    assert result["pair"] == [2, 7] and result["repeats"] == 2
    assert [row["protocol"] for row in result["rows"]] == ["full", "curated->full"]
    for row in result["rows"]:
        assert [run["seed"] for run in row["runs"]] == [0, 1]
        for run in row["runs"]:
            assert run["sum"] == run["a_to_b"] + run["b_to_a"]
        sums = np.array([run["sum"] for run in row["runs"]], dtype=float)
        assert row["sum"]["mean"] == pytest.approx(sums.mean())
    assert set(result["baseline"]) == {"accuracy", "a_to_b", "b_to_a", "sum"}
    # Fig. 8 after fine-tuning: the mean confusion matrix per protocol agrees with the pair counts.
    assert set(result["confusions"]) == {"final", "full", "curated->full"}
    for row in result["rows"]:
        matrix = np.array(result["confusions"][row["protocol"]])
        assert matrix.shape == (10, 10) and matrix.sum() == pytest.approx(len(test))
        assert matrix[2, 7] == pytest.approx(row["a_to_b"]["mean"])
        assert matrix[7, 2] == pytest.approx(row["b_to_a"]["mean"])
    again = run_protocols(lambda: SmallCNN(width=4), final, full, curated, test, (2, 7), **kwargs)
    assert again["rows"] == result["rows"]  # seeded: the same numbers again


def test_mean_and_sample_std_by_hand():
    # mean(8, 10, 12) = 10 ; sample std = sqrt(((-2)^2 + 0 + 2^2) / (3 - 1)) = 2
    assert _mean_std([8, 10, 12]) == {"mean": 10.0, "std": 2.0}
    assert _mean_std([5]) == {"mean": 5.0, "std": 0.0}


def test_table_markdown_formats_mean_pm_std():
    result = {"pair": [2, 7], "repeats": 5, "baseline": {"accuracy": 0.98, "a_to_b": 3, "b_to_a": 4, "sum": 7},
              "rows": [{"protocol": "curated->full", "accuracy": {"mean": 0.9864, "std": 0.0012},
                        "a_to_b": {"mean": 4.8, "std": 2.79}, "b_to_a": {"mean": 3.6, "std": 3.44},
                        "sum": {"mean": 8.4, "std": 1.85}, "runs": []}]}
    table = table_markdown(result, [str(i) for i in range(10)])
    assert "| protocol | Acc. (%) | 2→7 | 7→2 | sum |" in table
    assert "| curated → full | 98.64 ± 0.12 | 4.80 ± 2.79 | 3.60 ± 3.44 | 8.40 ± 1.85 |" in table
    assert "| final model (no fine-tuning) | 98.00 | 3 | 4 | 7 |" in table


def test_bad_arguments(setting):
    full, curated, test, final = setting
    build = lambda: SmallCNN(width=4)  # noqa: E731
    with pytest.raises(InvalidArgument, match="two different classes"):
        run_protocols(build, final, full, curated, test, (3, 3), mean=MEAN, std=STD)
    with pytest.raises(InvalidArgument, match="curated set is empty"):
        run_protocols(build, final, full, curated.subset([]), test, (2, 7), mean=MEAN, std=STD)
    with pytest.raises(InvalidArgument, match="unknown protocols"):
        run_protocols(build, final, full, curated, test, (2, 7), mean=MEAN, std=STD, protocols=("half",))
    assert PROTOCOLS == ("full", "curated", "full->full", "curated->curated", "curated->full")
