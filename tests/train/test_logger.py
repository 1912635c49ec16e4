"""mtl_train.train.logger: a run closed early ends its TensorBoard session."""
import pytest


@pytest.mark.parametrize("failed, status", [(True, "STATUS_FAILURE"), (False, "STATUS_UNKNOWN")])
def test_a_run_closed_before_its_final_metrics_ends_its_session(tmp_path, failed, status):
    from omegaconf import OmegaConf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    from mtl_train.train.logger import RunLogger

    cfg = OmegaConf.create({"trainer": {"log_every_steps": 1, "lr": 0.01}, "model": {"hidden": [8, 4], "x": None}})
    logger = RunLogger(str(tmp_path / "job"), cfg, ["a"], progress=False)
    logger.close(failed=failed)
    logger.close()  # twice is fine
    acc = EventAccumulator(str(tmp_path / "job" / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == getattr(api_pb2, status)
    hp = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]).hparams
    assert (hp["trainer.lr"].number_value, hp["model.hidden"].string_value, hp["model.x"].string_value) == (
        0.01, "[8, 4]", "None")
