"""The routing table's token map behaves as a dict keyed by hex digests."""

from gateway.routing import HashMap
from services.contract import secret_hash


def test_hashmap_behaves_as_a_dict():
    keys = [secret_hash(f"token-{n}") for n in range(2000)]
    mapping = HashMap((key, (n, 1.0)) for n, key in enumerate(keys))
    reference = {key: (n, 1.0) for n, key in enumerate(keys)}

    assert len(mapping) == 2000 and mapping == reference
    assert keys[7] in mapping and "ff" + "0" * 62 not in mapping and 5 not in mapping
    assert mapping.get(keys[7]) == (7, 1.0) and mapping.get("nope") is None and mapping.get("nope", 1) == 1
    assert mapping.pop(keys[7]) == (7, 1.0) and mapping.pop(keys[7]) is None
    mapping[keys[7]] = (70, 2.0)
    assert mapping.get(keys[7]) == (70, 2.0)
    # Spread over many small dicts, none of them large.
    assert len(mapping.shards) > 200 and max(len(shard) for shard in mapping.shards.values()) < 40
