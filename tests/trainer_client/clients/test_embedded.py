"""`trainer_client.connect("embedded")`: the SDK interface on the in-process selector."""

from __future__ import annotations

import numpy as np
import pytest

from pcm_contract.models import SelectRequest
from trainer_client import SelectorClient, connect


def test_embedded_client_round_trip() -> None:
    client = connect("embedded")
    assert isinstance(client, SelectorClient)
    info = client.put_run("demo", phases=3, feature_dim=2, keep_fraction=0.5)
    assert info.config.phases == 3
    rng = np.random.default_rng(0)
    lengths = [5, 3, 4, 2]
    request = SelectRequest(
        request_id="r", trainer_id="t", step=0,
        trajectories=[{"task_id": "reach", "group_id": "g0", "success": i < 2,
                       "phase_ids": np.arange(c) % 3, "action_features": rng.normal(size=(c, 2))}
                      for i, c in enumerate(lengths)])
    ans = client.select("demo", request)
    # Masks and weights are aligned to the submitted trajectories, in order.
    assert [m.shape[0] for m in ans.masks] == lengths
    assert [m.sum() for m in ans.masks] == [round(0.5 * c) or 1 for c in lengths]
    assert all(((w > 0) == m).all() for w, m in zip(ans.weights, ans.masks, strict=True))
    # The JSON of the answer is the HTTP body: plain lists.
    body = ans.model_dump(mode="json")
    assert body["masks"][0] == ans.masks[0].tolist()
    ack = client.report_outcomes("demo", {"selection_id": ans.selection_id, "request_id": "rep",
                                          "success_rate": 0.5})
    assert ack.accepted
    assert client.get_run("demo").outcome_reports == 1
    assert client.delete_run("demo").deleted


def test_unknown_url_scheme() -> None:
    with pytest.raises(ValueError, match="unknown selector url"):
        connect("ftp://x")
