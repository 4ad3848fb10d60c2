"""The claims ledger: per-pool sums of what every workload holds, reservations, freed capacity."""

from __future__ import annotations

from continuum.controller.keys import CLAIM_PLACEMENT, CLAIM_PREVIOUS, WorkloadKey
from continuum.controller.ledger import ClaimsLedger, claims_in_status
from continuum.placement import filters
from continuum.placement.snapshot import PoolUsage

A = WorkloadKey("ns", "a")
B = WorkloadKey("ns", "b")


def test_only_placed_or_unschedulable_workloads_hold_claims():
    placed = {"phase": "Placed", "placement": {"pool": "p"}, "previousPlacement": {"pool": "q"}}
    assert claims_in_status(placed) == {CLAIM_PLACEMENT: "p", CLAIM_PREVIOUS: "q"}
    assert claims_in_status({**placed, "phase": "Unschedulable"}) == {
        CLAIM_PLACEMENT: "p",
        CLAIM_PREVIOUS: "q",
    }
    assert claims_in_status({**placed, "phase": "Invalid"}) == {}
    assert claims_in_status(None) == {}


def test_sums_per_pool_and_usage_excluding_oneself(example_snapshot, example_workloads):
    spec = example_workloads["line-defect-inspection"].spec
    mec = example_snapshot.pool("mec-frankfurt")
    usage = filters.usage_of(spec, mec)
    ledger = ClaimsLedger()
    first = ledger.set(A, {CLAIM_PLACEMENT: "mec-frankfurt"}, spec, example_snapshot)
    assert first.changed and not first.freed
    ledger.set(B, {CLAIM_PLACEMENT: "mec-frankfurt"}, spec, example_snapshot)
    assert ledger.by_pool["mec-frankfurt"] == usage + usage
    assert ledger.usage_excluding(A)["mec-frankfurt"] == usage
    again = ledger.set(B, {CLAIM_PLACEMENT: "mec-frankfurt"}, spec, example_snapshot)
    assert not again.changed  # same claim: nothing to do


def test_moving_or_dropping_frees_capacity_and_bumps_the_epoch(example_snapshot, example_workloads):
    spec = example_workloads["line-defect-inspection"].spec
    ledger = ClaimsLedger()
    ledger.set(A, {CLAIM_PLACEMENT: "munich-line"}, spec, example_snapshot)
    epoch = ledger.epoch
    grown = ledger.set(
        A, {CLAIM_PLACEMENT: "munich-line", CLAIM_PREVIOUS: "munich-line"}, spec, example_snapshot
    )
    assert grown.changed and not grown.freed and ledger.epoch == epoch  # more held, nothing freed
    # a move: the new pool is claimed while the old one drains (both held); the placement entry
    # changed pool, which counts as freed (conservative: stuck workloads get another look)
    both = ledger.set(
        A, {CLAIM_PLACEMENT: "mec-frankfurt", CLAIM_PREVIOUS: "munich-line"}, spec, example_snapshot
    )
    assert both.changed and both.freed and ledger.epoch == epoch + 1
    assert ledger.by_pool["munich-line"].workloads == 1 and ledger.by_pool["mec-frankfurt"].workloads == 1
    drained = ledger.set(A, {CLAIM_PLACEMENT: "mec-frankfurt"}, spec, example_snapshot)
    assert drained.freed and ledger.epoch == epoch + 2
    assert ledger.by_pool["munich-line"] == PoolUsage()
    gone = ledger.drop(A)
    assert gone.freed and ledger.by_pool["mec-frankfurt"] == PoolUsage()


def test_a_reservation_wins_over_the_written_status_until_released():
    ledger = ClaimsLedger()
    status = {"phase": "Placed", "placement": {"pool": "old"}}
    ledger.reserve(A, {CLAIM_PLACEMENT: "new"})
    assert ledger.wanted(A, status) == {CLAIM_PLACEMENT: "new"}
    ledger.release(A)
    assert ledger.wanted(A, status) == {CLAIM_PLACEMENT: "old"}


def test_unknown_pools_and_invalid_specs_hold_nothing(example_snapshot, example_workloads):
    spec = example_workloads["camera-anomaly"].spec
    ledger = ClaimsLedger()
    assert not ledger.set(A, {CLAIM_PLACEMENT: "no-such-pool"}, spec, example_snapshot).changed
    assert not ledger.set(A, {CLAIM_PLACEMENT: "munich-cameras"}, None, example_snapshot).changed
    assert ledger.by_pool == {}


def test_rebuild_recomputes_every_claim_against_a_new_snapshot(example_snapshot, example_workloads):
    spec = example_workloads["camera-anomaly"].spec
    ledger = ClaimsLedger()
    ledger.set(A, {CLAIM_PLACEMENT: "munich-cameras"}, spec, example_snapshot)
    ledger.by_pool["munich-cameras"] = PoolUsage()  # drifted: rebuild must restore the sum
    epoch = ledger.epoch
    held = ledger.rebuild(
        [A, B], lambda k: ({CLAIM_PLACEMENT: "munich-cameras"} if k == A else {}, spec), example_snapshot
    )
    assert held and ledger.epoch == epoch + 1
    assert ledger.by_pool["munich-cameras"] == filters.usage_of(spec, example_snapshot.pool("munich-cameras"))


def test_usage_rows_follow_every_change_as_the_dict_does(example_snapshot, example_workloads):
    """The (P, 4) rows the operator decides with (kept row by row) equal the dict rebuilt from scratch,
    after claims, a second claim on the same pool, a move, a drop and a new snapshot (a new table)."""
    import random

    import numpy as np
    from continuum.placement import fast
    from continuum.placement.snapshot import build_snapshot

    specs = [w.spec for w in example_workloads.values()]
    pools = [p.name for p in example_snapshot.pools]
    keys = [WorkloadKey("ns", f"w{i}") for i in range(8)]
    rng = random.Random(5)
    ledger = ClaimsLedger()
    snapshot = example_snapshot
    for step in range(60):
        key = rng.choice(keys)
        spec = specs[keys.index(key) % len(specs)]
        roll = rng.random()
        if roll < 0.15:
            ledger.drop(key)
        elif roll < 0.3:
            ledger.set(
                key, {CLAIM_PLACEMENT: rng.choice(pools), CLAIM_PREVIOUS: rng.choice(pools)}, spec, snapshot
            )
        else:
            ledger.set(key, {CLAIM_PLACEMENT: rng.choice(pools)}, spec, snapshot)
        if step == 30:  # a rebuilt snapshot: its own table, the rows follow
            snapshot = build_snapshot([p.pool for p in example_snapshot.pools], [])
        table = snapshot.table
        assert np.array_equal(ledger.used_array(table), fast.usage_array(table.names, ledger.by_pool))
        for other in keys:
            expected = fast.usage_array(table.names, ledger.usage_excluding(other))
            assert np.array_equal(ledger.used_excluding(other, table), expected)


def test_the_same_inputs_again_change_nothing_and_new_ones_are_recomputed(
    example_snapshot, example_workloads
):
    """set() returns at once for the inputs it last saw (the wanted pools, the same spec and snapshot
    objects); another spec object, another snapshot or a drop recompute the claims."""
    spec = example_workloads["line-defect-inspection"].spec
    other = example_workloads["line-defect-inspection"].spec.model_copy(deep=True)
    ledger = ClaimsLedger()
    wanted = {CLAIM_PLACEMENT: "mec-frankfurt"}
    assert ledger.set(A, wanted, spec, example_snapshot).changed
    assert not ledger.set(A, dict(wanted), spec, example_snapshot).changed
    bigger = other.model_copy(update={"replicas": spec.replicas + 1})
    assert ledger.set(A, wanted, bigger, example_snapshot).changed  # another spec: recomputed
    assert ledger.by_pool["mec-frankfurt"] == filters.usage_of(bigger, example_snapshot.pool("mec-frankfurt"))
    assert ledger.drop(A).changed
    assert ledger.set(A, wanted, bigger, example_snapshot).changed  # after a drop: held again
    assert ledger.by_pool["mec-frankfurt"].workloads == 1
