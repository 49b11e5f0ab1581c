import os

import pytest
from core_guest import RAM_GPA, GuestQueue

from acrnmgr.devmodel import features as F
from acrnmgr.devmodel.memory import GuestMemory, GuestMemoryError
from acrnmgr.devmodel.virtqueue import (
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
    VirtQueue, vring_need_event,
)


# -- guest memory ------------------------------------------------------------------------------------------------
def test_view_bounds(ram):
    mem = ram.mem
    end = RAM_GPA + ram.size
    assert len(mem.view(RAM_GPA, ram.size)) == ram.size
    assert len(mem.view(end, 0)) == 0
    assert len(mem.view(end - 1, 1)) == 1
    for gpa, n in [(end - 1, 2), (RAM_GPA - 1, 1), (end, 1), (2**64 - 1, 2), (RAM_GPA, 2**64 - 1), (0, 1),
                   (RAM_GPA, -1)]:
        with pytest.raises(GuestMemoryError):
            mem.view(gpa, n)


def test_view_is_readonly_unless_writable(ram):
    v = ram.mem.view(RAM_GPA, 4)
    assert v.readonly
    w = ram.mem.view(RAM_GPA, 4, writable=True)
    w[:] = b"abcd"
    assert ram.read(RAM_GPA, 4) == b"abcd"
    assert bytes(v) == b"abcd"


def test_view_never_spans_regions():
    mem = GuestMemory()
    mem.add_buffer_region(0x1000, bytearray(0x1000))
    mem.add_buffer_region(0x2000, bytearray(0x1000))  # adjacent, but a different region
    assert len(mem.view(0x1800, 0x800)) == 0x800
    with pytest.raises(GuestMemoryError):
        mem.view(0x1800, 0x1000)
    with pytest.raises(GuestMemoryError):
        mem.add_buffer_region(0x2800, bytearray(0x1000))  # overlap
    mem.close()


def test_translation_and_scalars(ram):
    mem = ram.mem
    assert mem.uva_to_gpa(0x7F00_0000_0010) == RAM_GPA + 0x10
    with pytest.raises(GuestMemoryError):
        mem.uva_to_gpa(0x7F00_0000_0000 + ram.size)
    mem.write_u64(RAM_GPA + 8, 0x1122334455667788)
    assert ram.read(RAM_GPA + 8, 8) == bytes.fromhex("8877665544332211")
    assert mem.read_u32(RAM_GPA + 8) == 0x55667788
    assert mem.read_u16(RAM_GPA + 14) == 0x1122
    mem.write_u32(RAM_GPA, 7)
    mem.write_u16(RAM_GPA + 4, 9)
    assert mem.read(RAM_GPA, 6) == b"\x07\0\0\0\x09\0"


def test_mmap_offset_is_honoured(ram):
    # The region starts one page into the memfd: guest byte 0 is memfd byte PAGE.
    ram.mem.write(RAM_GPA, b"xyz")
    assert ram.raw[ram.off(RAM_GPA):ram.off(RAM_GPA) + 3] == b"xyz"
    assert ram.guards_intact()


# -- pop / push ----------------------------------------------------------------------------------------------------
def test_pop_direct_chain_and_push(ram):
    q = GuestQueue(ram)
    vq = q.vq
    assert vq.pop(q.mem) is None
    head = q.add([q.buf(b"hello "), q.buf(b"world"), q.buf(8, True), q.buf(4, True)])
    assert vq.has_pending(q.mem)
    chain = vq.pop(q.mem)
    assert chain.head == head
    assert b"".join(bytes(b) for b in chain.readable) == b"hello world"
    assert chain.readable_len == 11 and chain.writable_len == 12
    assert all(b.readonly for b in chain.readable) and not any(b.readonly for b in chain.writable)
    chain.writable[0][:] = b"ABCDEFGH"
    assert vq.pop(q.mem) is None
    vq.push(q.mem, chain.head, 8)
    assert q.used_idx() == 0  # not yet published
    vq.flush_used(q.mem)
    assert q.get_used() == [(head, 8)]
    assert not vq.broken


def test_pop_indirect_chain(ram):
    q = GuestQueue(ram)
    head = q.add([q.buf(b"req"), q.buf(16, True)], indirect=True)
    chain = q.vq.pop(q.mem)
    assert chain.head == head and chain.readable_len == 3 and chain.writable_len == 16
    q.vq.push(q.mem, head, 16)
    q.vq.flush_used(q.mem)
    assert q.get_used() == [(head, 16)]


def test_ring_wraps_and_free_running_indexes(ram):
    q = GuestQueue(ram, size=4)
    q.vq.last_avail_idx = q.avail_idx = 0xFFFE
    q.ram.write(q.avail + 2, q.u16.pack(q.avail_idx))
    q.vq.set_used_idx(0xFFFE)
    q.last_used = 0xFFFE
    seen = []
    for n in range(10):
        h = q.add([q.buf(bytes([n]))])
        c = q.vq.pop(q.mem)
        assert c.head == h and bytes(c.readable[0]) == bytes([n])
        q.vq.push(q.mem, c.head, 0)
        q.vq.flush_used(q.mem)
        seen += q.get_used()
    assert len(seen) == 10 and q.vq.last_avail_idx == (0xFFFE + 10) & 0xFFFF
    assert not q.vq.broken


def test_zero_length_descriptor_is_skipped(ram):
    q = GuestQueue(ram)
    q.add([q.buf(b"a"), (RAM_GPA, 0, False), q.buf(2, True)])
    c = q.vq.pop(q.mem)
    assert len(c.readable) == 1 and c.writable_len == 2


# -- hostile rings -------------------------------------------------------------------------------------------------
def _broken_after(q):
    assert q.vq.pop(q.mem) is None
    assert q.vq.broken and q.vq.broken_reason
    assert q.vq.pop(q.mem) is None  # stays broken
    return q.vq.broken_reason


def test_head_out_of_range(ram):
    q = GuestQueue(ram, size=8)
    q.publish(8)
    assert "head" in _broken_after(q)


def test_next_out_of_range(ram):
    q = GuestQueue(ram, size=8)
    q.write_desc(0, RAM_GPA, 4, VRING_DESC_F_NEXT, 8)
    q.publish(0)
    assert "next" in _broken_after(q)


def test_loop(ram):
    q = GuestQueue(ram, size=8)
    q.write_desc(0, RAM_GPA, 4, VRING_DESC_F_NEXT, 1)
    q.write_desc(1, RAM_GPA, 4, VRING_DESC_F_NEXT, 0)
    q.publish(0)
    assert "longer" in _broken_after(q)


def test_avail_idx_jump(ram):
    q = GuestQueue(ram, size=8)
    q.ram.write(q.avail + 2, q.u16.pack(9))
    assert q.vq.has_pending(q.mem)  # peeking must not skip the validation pop() does
    assert "jumped" in _broken_after(q)


def test_setting_base_discards_cached_avail_idx(ram):
    q = GuestQueue(ram, size=8)
    q.add([q.buf(b"x")])
    q.add([q.buf(b"y")])
    assert q.vq.pop(q.mem) is not None
    q.vq.last_avail_idx = 2  # SET_VRING_BASE: the front-end says both were consumed
    assert q.vq.pop(q.mem) is None and not q.vq.broken


@pytest.mark.parametrize("case", ["nested", "next", "len0", "len_odd", "len_big", "no_feature", "not_head", "oob"])
def test_bad_indirect(ram, case):
    feats = F.COMMON_FEATURES & ~F.bit(F.F_RING_INDIRECT_DESC) if case == "no_feature" else F.COMMON_FEATURES
    q = GuestQueue(ram, size=8, features=feats)
    table = ram.alloc(16 * 16)
    q.write_desc(0, RAM_GPA, 4, 0, 0, table=table)
    length, flags = 16, VRING_DESC_F_INDIRECT
    addr = table
    if case == "nested":
        q.write_desc(0, table, 16, VRING_DESC_F_INDIRECT, 0, table=table)
    elif case == "next":
        flags |= VRING_DESC_F_NEXT
    elif case == "len0":
        length = 0
    elif case == "len_odd":
        length = 24
    elif case == "len_big":
        length = 16 * 9
    elif case == "oob":
        addr = RAM_GPA + ram.size - 8
    if case == "not_head":
        q.write_desc(1, RAM_GPA, 4, VRING_DESC_F_NEXT, 2)
        q.write_desc(2, table, 16, VRING_DESC_F_INDIRECT, 0)
        q.publish(1)
    else:
        q.write_desc(0, addr, length, flags, 1)
        q.publish(0)
    _broken_after(q)


def test_readable_after_writable(ram):
    q = GuestQueue(ram)
    q.add([q.buf(4, True), q.buf(b"x")])
    assert "after a writable" in _broken_after(q)


@pytest.mark.parametrize("addr,length", [(RAM_GPA + (1 << 20) - 4, 8), (0, 4), (2**64 - 2, 4), (RAM_GPA - 1, 2)])
def test_buffer_outside_memory(ram, addr, length):
    q = GuestQueue(ram)
    q.write_desc(0, addr, length, VRING_DESC_F_WRITE, 0)
    q.publish(0)
    _broken_after(q)


@pytest.mark.parametrize("addr,length", [(RAM_GPA + (1 << 20) - 4, 8), (0, 4), (2**64 - 2, 4), (RAM_GPA - 1, 2)])
@pytest.mark.parametrize("position", [0, 1])
def test_buffer_outside_memory_in_an_indirect_table(ram, addr, length, position):
    """The in-order indirect walk checks each buffer against the region inline, like the general walk."""
    q = GuestQueue(ram)
    good = q.buf(b"header")
    bad = (addr, length, True)
    q.add([good, bad] if position else [bad, q.buf(1, True)], indirect=True)
    assert "descriptor" in _broken_after(q)


@pytest.mark.parametrize("nxt,reason", [(0, "longer than"), (1, "longer than"), (2, ">= table size"),
                                        (0xFFFF, ">= table size")])
def test_indirect_table_whose_last_descriptor_says_next(ram, nxt, reason):
    q = GuestQueue(ram)
    table = ram.alloc(32, 16)
    q.write_desc(0, q.buf(b"h")[0], 1, VRING_DESC_F_NEXT, 1, table=table)
    q.write_desc(1, q.buf(1, True)[0], 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, nxt, table=table)
    q.write_desc(0, table, 32, VRING_DESC_F_INDIRECT, 0)
    q.publish(0)
    assert reason in _broken_after(q)


def test_indirect_chain_in_table_order_and_not(ram):
    """A table laid out in order (as Linux does) and one whose links jump around give the same chain."""
    q = GuestQueue(ram)
    bufs = [q.buf(b"head"), q.buf(b"data"), q.buf(8, True), q.buf(1, True)]
    in_order = ram.alloc(64, 16)
    shuffled = ram.alloc(64, 16)
    slots = [0, 3, 1, 2]  # chain element k lives in table slot slots[k] (an indirect chain starts at slot 0)
    for k, (gpa, n, w) in enumerate(bufs):
        flags = (VRING_DESC_F_WRITE if w else 0) | (VRING_DESC_F_NEXT if k < 3 else 0)
        q.write_desc(k, gpa, n, flags, k + 1 if k < 3 else 0, table=in_order)
        q.write_desc(slots[k], gpa, n, flags, slots[k + 1] if k < 3 else 0, table=shuffled)
    chains = []
    for table in (in_order, shuffled):
        q.write_desc(0, table, 64, VRING_DESC_F_INDIRECT, 0)
        q.publish(0)
        chain = q.vq.pop(q.mem)
        assert chain is not None
        chains.append(([bytes(b) for b in chain.readable], [len(b) for b in chain.writable], chain.readable_len,
                       chain.writable_len))
        q.vq.push(q.mem, 0, 0)
    assert chains[0] == chains[1] == ([b"head", b"data"], [8, 1], 8, 9)


def test_ring_outside_memory_is_refused(ram):
    vq = VirtQueue(16)
    with pytest.raises(GuestMemoryError):
        vq.set_addresses(RAM_GPA + ram.size - 16, RAM_GPA, RAM_GPA + 4096, ram.mem)
    vq.set_addresses(RAM_GPA, RAM_GPA + 4096, RAM_GPA + 8192, ram.mem)
    assert vq.ready(ram.mem) and not vq.broken
    other = GuestMemory()  # memory table replaced by one that doesn't contain the ring
    assert vq.pop(other) is None and vq.broken
    assert not vq.ready(ram.mem)  # broken for good, whatever table comes next


def test_views_follow_the_memory_table_generation(ram):
    q = GuestQueue(ram)
    head = q.add([q.buf(b"x")])
    # Same guest RAM mapped again as a new table (SET_MEM_TABLE): the queue re-resolves its views from it.
    mem2 = GuestMemory()
    mem2.add_region(RAM_GPA, ram.size, 0x7F00_0000_0000, ram.off(RAM_GPA), ram.fd)
    c = q.vq.pop(mem2)
    assert c.head == head and bytes(c.readable[0]) == b"x"
    q.vq.push(mem2, c.head, 0)
    q.vq.flush_used(mem2)
    assert q.get_used() == [(head, 0)]
    gen = mem2.generation
    mem2.close()
    assert mem2.generation != gen  # closing invalidates views cached for that table
    assert q.vq.pop(q.mem) is None and not q.vq.broken


# -- notifications -------------------------------------------------------------------------------------------------
def test_vring_need_event_math():
    assert vring_need_event(0, 1, 0)
    assert not vring_need_event(1, 1, 0)
    assert vring_need_event(5, 10, 3)
    assert not vring_need_event(10, 10, 3)
    assert vring_need_event(0xFFFF, 2, 0xFFFE)  # across the wrap
    assert not vring_need_event(2, 2, 0xFFFE)


def _complete_one(q):
    q.add([q.buf(1, True)])
    c = q.vq.pop(q.mem)
    q.vq.push(q.mem, c.head, 1)
    q.vq.flush_used(q.mem)
    q.get_used()


def test_no_interrupt_flag(ram):
    q = GuestQueue(ram, features=F.mask(F.F_VERSION_1))
    _complete_one(q)
    assert q.vq.should_notify(q.mem)
    assert not q.vq.should_notify(q.mem)  # nothing new published
    q.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
    _complete_one(q)
    assert not q.vq.should_notify(q.mem)


def test_notify_on_empty_overrides_no_interrupt(ram):
    q = GuestQueue(ram, features=F.mask(F.F_VERSION_1, F.F_NOTIFY_ON_EMPTY))
    q.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
    _complete_one(q)
    assert q.vq.should_notify(q.mem)


def test_event_idx_used_event(ram):
    q = GuestQueue(ram)
    _complete_one(q)
    assert q.vq.should_notify(q.mem)       # first notification is always sent
    q.set_used_event(5)               # "interrupt me when used idx passes 5"
    for _ in range(4):                # used idx 2..5
        _complete_one(q)
        assert not q.vq.should_notify(q.mem)
    _complete_one(q)                  # used idx 6: crossed 5
    assert q.vq.should_notify(q.mem)
    q.set_used_event(6)               # already passed: no new notification until it is crossed again
    assert not q.vq.should_notify(q.mem)


def test_event_idx_batched_crossing(ram):
    q = GuestQueue(ram)
    _complete_one(q)
    q.vq.should_notify(q.mem)
    q.set_used_event(2)
    for _ in range(3):  # used idx 1 -> 4 in one batch crosses used_event 2
        q.add([q.buf(1, True)])
    while (c := q.vq.pop(q.mem)) is not None:
        q.vq.push(q.mem, c.head, 1)
    q.vq.flush_used(q.mem)
    assert q.vq.should_notify(q.mem)


def test_avail_event_and_no_notify(ram):
    q = GuestQueue(ram)
    for _ in range(3):
        q.add([q.buf(b"x")])
    q.vq.disable_notification(q.mem)
    while q.vq.pop(q.mem) is not None:
        pass
    assert not q.vq.enable_notification(q.mem)
    assert q.avail_event() == 3
    q.add([q.buf(b"y")])
    assert q.vq.enable_notification(q.mem)  # work arrived: caller must keep going

    q2 = GuestQueue(ram, features=F.mask(F.F_VERSION_1, F.F_RING_INDIRECT_DESC))
    q2.vq.disable_notification(q2.mem)
    assert q2.used_flags() == VRING_USED_F_NO_NOTIFY
    assert not q2.vq.enable_notification(q2.mem)
    assert q2.used_flags() == 0


# -- endianness, restore, hooks ------------------------------------------------------------------------------------
def test_legacy_big_endian_ring(ram):
    q = GuestQueue(ram, features=F.mask(F.F_RING_INDIRECT_DESC), big_endian=True)
    head = q.add([q.buf(b"legacy"), q.buf(3, True)])
    c = q.vq.pop(q.mem)
    assert c.head == head and bytes(c.readable[0]) == b"legacy" and c.writable_len == 3
    q.vq.push(q.mem, head, 3)
    q.vq.flush_used(q.mem)
    assert q.get_used() == [(head, 3)]
    # The same ring read as little-endian would be garbage: the switch really happened.
    assert q.vq.byteorder == ">"
    q.vq.set_features(F.COMMON_FEATURES)
    assert q.vq.byteorder == "<"


def test_used_idx_synced_from_ring_and_restored(ram):
    q = GuestQueue(ram)
    q.ram.write(q.used + 2, q.u16.pack(7))
    vq = VirtQueue(q.size)
    vq.set_addresses(q.desc, q.avail, q.used, ram.mem)
    assert vq.used_idx == 7
    vq.set_used_idx(3)
    vq.set_features(q.features)  # re-resolving must not re-read the ring
    assert vq.ready(ram.mem) and vq.used_idx == 3


def test_inflight_hooks_and_resubmit(ram):
    q = GuestQueue(ram)
    events = []
    q.vq.on_pop = lambda h: events.append(("pop", h))
    q.vq.on_push = lambda h: events.append(("push", h))
    q.vq.on_flush = lambda heads, idx: events.append(("flush", tuple(heads), idx))
    a = q.add([q.buf(b"a")])
    b = q.add([q.buf(b"b")])
    ca, cb = q.vq.pop(q.mem), q.vq.pop(q.mem)
    q.vq.push(q.mem, ca.head, 0)
    q.vq.push(q.mem, cb.head, 0)
    q.vq.flush_used(q.mem)
    assert events == [("pop", a), ("pop", b), ("push", a), ("push", b), ("flush", (a, b), 2)]
    # Reconnect: the head b is reported in flight again and must be served before the avail ring.
    c = q.add([q.buf(b"c")])
    q.vq.resubmit([b])
    events.clear()
    assert q.vq.pop(q.mem).head == b
    assert q.vq.pop(q.mem).head == c
    assert events == [("pop", c)]


def test_reset_forgets_guest_state(ram):
    q = GuestQueue(ram)
    q.write_desc(0, 0, 4, 0, 0)
    q.publish(0)
    q.vq.pop(q.mem)
    assert q.vq.broken
    q.vq.reset()
    assert not q.vq.broken and not q.vq.ready(q.mem) and q.vq.last_avail_idx == 0


def test_inflight_region_survives_a_backend_restart(ram):
    from acrnmgr.devmodel.inflight import InflightArea

    area, fd = InflightArea.create(1, 16)
    try:
        q = GuestQueue(ram)
        region = area.queue(0)
        assert region.recover(q.vq.used_idx) == []  # fresh region gets initialised
        q.vq.inflight = region
        a = q.add([q.buf(b"a")])
        b = q.add([q.buf(b"b")])
        ca, cb = q.vq.pop(q.mem), q.vq.pop(q.mem)
        assert (ca.head, cb.head) == (a, b)
        q.vq.push(q.mem, ca.head, 0)
        q.vq.flush_used(q.mem)
        assert region.inflight_heads() == [b]
        # "Crash": a new back-end maps the same region and rebuilds its queue from the ring.
        vq2 = VirtQueue(q.size)
        vq2.set_features(q.features)
        vq2.set_addresses(q.desc, q.avail, q.used, ram.mem)
        heads = region.recover(vq2.used_idx)
        assert heads == [b] and vq2.used_idx == 1
        vq2.last_avail_idx = (vq2.used_idx + len(heads)) & 0xFFFF
        vq2.inflight = region
        vq2.resubmit(heads)
        again = vq2.pop(q.mem)
        assert again.head == b and bytes(again.readable[0]) == b"b"
        assert vq2.pop(q.mem) is None  # a was completed, b resubmitted: nothing else pending
        vq2.push(q.mem, b, 0)
        vq2.flush_used(q.mem)
        assert region.inflight_heads() == []
        assert a != b
    finally:
        area.close()
        os.close(fd)


def test_pop_batch_serves_good_chains_before_a_bad_one(ram):
    q = GuestQueue(ram, size=8)
    heads = [q.add([q.buf(b"a"), q.buf(4, True)]), q.add([q.buf(b"b"), q.buf(4, True)], indirect=True)]
    q.publish(8)  # a head out of range after two good chains
    chains = q.vq.pop_batch(q.mem, 8)
    assert [c.head for c in chains] == heads and not q.vq.broken
    assert q.vq.pop_batch(q.mem, 8) == [] and "head" in q.vq.broken_reason


def test_pop_batch_limit_and_resubmitted_heads_first(ram):
    q = GuestQueue(ram, size=8)
    heads = [q.add([q.buf(b"x"), q.buf(4, True)]) for _ in range(3)]
    assert [c.head for c in q.vq.pop_batch(q.mem, 2)] == heads[:2]
    q.vq.resubmit([heads[0]])
    assert [c.head for c in q.vq.pop_batch(q.mem, 8)] == [heads[0], heads[2]]
    assert q.vq.pop_batch(q.mem, 8) == [] and not q.vq.broken


def test_indirect_table_of_a_length_seen_before_is_still_checked(ram):
    q = GuestQueue(ram, size=8)
    head = q.add([q.buf(b"req"), q.buf(16, True)], indirect=True)
    assert q.vq.pop(q.mem).head == head
    q.write_desc(1, RAM_GPA + ram.size - 16, 32, VRING_DESC_F_INDIRECT, 0)  # same length, not in guest memory
    q.publish(1)
    assert "indirect table" in _broken_after(q)
