"""A base method is one file: a toy method defined in this file alone runs through the CLI, the
studio's menu and controls, the estimate, the cache keys and an export."""

import pytest

from pdd_engine import DistillConfig
from pdd_engine.__main__ import main
from pdd_engine.errors import ConfigError
from pdd_engine.estimate import estimate
from pdd_engine.export import load_bundle
from pdd_engine.keys import Keys, unclassified
from pdd_engine.methods import REGISTRY, Method, register


@pytest.fixture
def toy():
    @register
    class Toy(Method):
        """Match each class's mean image to the mean of a real batch."""

        name = "toy"
        title = "Toy: class-mean matching"
        lr_img = 1.0
        params = ("batch_real",)

        def loss(self, stored, it):
            ctx = self.ctx
            x, y = self.union(stored)
            total = x.new_zeros(())
            for c in range(ctx.ds.num_classes):
                total = total + ((ctx.real_batch(c, ctx.cfg.batch_real, self.g).mean(0) - x[y == c].mean(0)) ** 2).sum()
            return total

        @classmethod
        def manifest(cls, cfg, size):
            return {**super().manifest(cfg, size), "training_form": "toy: stored images are class means"}

    yield Toy
    REGISTRY.pop("toy")


def test_a_method_defined_in_one_file_runs_everywhere(toy, tmp_path, capsys):
    from app.ui import method_choices, shown_for

    out = tmp_path / "toy.zip"
    assert main(["distill", "--method", "toy", "--stages", "2", "--ipc", "2", "--iterations", "5", "--eval-epochs", "5",
                 "--eval-models", "1", "--compare-base", "off", "--cache-dir", str(tmp_path / "c"), "--quiet",
                 "--out", str(out)]) == 0
    assert "| stage | IPC | PDD+TOY acc %" in capsys.readouterr().out
    m = load_bundle(out).manifest
    assert m["method"] == "toy" and m["training_form"].startswith("toy:") and len(m["stage_entries"]) == 2
    assert ("Toy: class-mean matching", "toy") in method_choices()
    assert shown_for("iterations", "toy") and not shown_for("syn_steps", "toy") and shown_for("syn_steps", "mtt")
    cfg = DistillConfig(method="toy")
    assert cfg.effective_lr_img == 1.0 and estimate(cfg).seconds > 0
    k = lambda c: Keys(c, "f" * 16, 8).stage(2)  # noqa: E731
    assert k(cfg) == k(cfg.replace(syn_steps=3)) and k(cfg) != k(cfg.replace(batch_real=64))
    assert unclassified() == set()


def test_unregistered_method_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="unknown method 'toy'.*choose one of dm, "):
        DistillConfig(method="toy")
