"""The .pth reader: the packaged EfficientNet-Lite0 checkpoint, and what it refuses to load."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest

from imgclf.model.pretrained import packaged_checkpoint_path
from imgclf.model.torch_checkpoint import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    CheckpointError,
    load_state_dict,
)


def test_reads_every_tensor_of_the_packaged_checkpoint():
    state_dict = load_state_dict(packaged_checkpoint_path())
    assert len(state_dict) == 296
    batches = [k for k in state_dict if k.endswith("num_batches_tracked")]
    assert len(batches) == 49
    floats = {k: v for k, v in state_dict.items() if k not in batches}
    assert len(floats) == 247 and all(v.dtype == np.float32 for v in floats.values())
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert not any("_se_" in k for k in state_dict)  # Lite: no squeeze-excite
    assert all(np.isfinite(v).all() for v in floats.values())


def _legacy_headers() -> bytes:
    return b"".join(
        pickle.dumps(obj, protocol=2)
        for obj in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"little_endian": True})
    )


def test_refuses_arbitrary_globals(tmp_path):
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "pwned"
    # A pickle that would call os.system(...) if globals were resolved freely.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    evil.write_bytes(_legacy_headers() + payload)
    with pytest.raises(CheckpointError, match=r"refusing to unpickle os\.system"):
        load_state_dict(evil)
    assert not marker.exists()


def test_rejects_zip_format_and_non_checkpoints(tmp_path):
    zipped = tmp_path / "new_format.pt"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", b"")
    with pytest.raises(CheckpointError, match="zip-format"):
        load_state_dict(zipped)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_state_dict(garbage)
    wrong_magic = tmp_path / "wrong_magic.pth"
    wrong_magic.write_bytes(pickle.dumps(12345, protocol=2))
    with pytest.raises(CheckpointError, match="magic number"):
        load_state_dict(wrong_magic)
