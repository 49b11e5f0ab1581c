"""QEMU's inflight buffer: layout, tracking and recovery after a back-end crash."""

import os
import struct

import pytest

from acrnmgr.devmodel.inflight import InflightArea, InflightError, queue_region_size


def test_region_size_holds_header_and_descs_aligned_to_64():
    for q in (1, 2, 3, 4, 128, 256, 1024):
        size = queue_region_size(q)
        assert size % 64 == 0 and size >= 16 + 16 * q


def test_fresh_region_is_initialised_on_first_start():
    area, fd = InflightArea.create(2, 8)
    try:
        q = area.queue(1)
        assert q.recover(0) == []
        raw = os.pread(fd, 16, queue_region_size(8))
        assert struct.unpack("<QHHHH", raw) == (0, 1, 8, 0, 0)  # version 1, desc_num 8
    finally:
        area.close()
        os.close(fd)


def _reopen(fd, area):
    return InflightArea(fd, area.mmap_size, 0, area.num_queues, area.queue_size)


def test_crash_with_requests_inflight_resubmits_them_in_fetch_order():
    area, fd = InflightArea.create(1, 8)
    q = area.queue(0)
    q.recover(0)
    for head in (5, 2, 7, 0):
        q.mark(head)
    q.begin_put(2)
    q.end_put([2], 1)  # head 2 completed; used idx 1
    area.close()  # back-end dies (the front-end kept the fd)
    again = _reopen(fd, area)
    try:
        assert again.queue(0).recover(1) == [5, 7, 0]
    finally:
        again.close()
        os.close(fd)


def test_crash_between_used_index_update_and_clearing_rolls_the_batch_forward():
    area, fd = InflightArea.create(1, 8)
    q = area.queue(0)
    q.recover(0)
    for head in (1, 3, 4):
        q.mark(head)
    q.begin_put(3)
    q.begin_put(1)
    # Crash here: the used ring already shows idx 2 (heads 3 and 1) but end_put never ran.
    area.close()
    again = _reopen(fd, area)
    try:
        assert again.queue(0).recover(2) == [4]
        assert again.queue(0).used_idx == 2
    finally:
        again.close()
        os.close(fd)


def test_counter_continues_after_recovery():
    area, fd = InflightArea.create(1, 4)
    q = area.queue(0)
    q.recover(0)
    q.mark(3)
    area.close()
    again = _reopen(fd, area)
    q2 = again.queue(0)
    assert q2.recover(0) == [3]
    q2.mark(1)  # fetched after the resubmitted head: must sort after it
    again.close()
    third = _reopen(fd, area)
    try:
        assert third.queue(0).recover(0) == [3, 1]
    finally:
        third.close()
        os.close(fd)


def test_mismatched_geometry_resets_rather_than_trusting_it():
    area, fd = InflightArea.create(1, 8)
    area.queue(0).recover(0)
    area.queue(0).mark(6)
    area.close()
    smaller = InflightArea(fd, queue_region_size(4), 0, 1, 4)
    try:
        assert smaller.queue(0).recover(0) == []
    finally:
        smaller.close()
        os.close(fd)


def test_garbage_buffer_never_crashes_recovery():
    area, fd = InflightArea.create(1, 16)
    area.close()
    os.pwrite(fd, struct.pack("<QHHHH", 0, 1, 16, 0xFFFF, 0x1234) + os.urandom(16 * 16), 0)
    again = _reopen(fd, area)
    try:
        heads = again.queue(0).recover(0)
        assert all(0 <= h < 16 for h in heads)
    finally:
        again.close()
        os.close(fd)


def test_bad_descriptions_are_refused():
    area, fd = InflightArea.create(1, 8)
    area.close()
    try:
        with pytest.raises(InflightError):
            InflightArea(fd, 16, 0, 1, 8)  # too small
        with pytest.raises(InflightError):
            InflightArea(fd, area.mmap_size, 100, 1, 8)  # unaligned offset
        with pytest.raises(InflightError):
            InflightArea(fd, area.mmap_size * 4, 0, 1, 8)  # larger than the file
        with pytest.raises(InflightError):
            InflightArea(fd, area.mmap_size, 0, 0, 8)
    finally:
        os.close(fd)
