"""A fast, exact zlib encoder for moving-line videos (pipeline/moving_line/README.md describes them).

`compress_video(video)` returns a zlib stream (RFC 1950 around one dynamic-Huffman
RFC 1951 block) that decodes to exactly `video.tobytes()`. On moving-line videos it
is several times faster than `zlib.compress` and smaller than its level 9 (BENCHMARKS.md),
in pure Python and numpy; anything else goes to `zlib.compress` (level 6).

Why it can be fast: frame t of a moving-line video is frame t-1 plus one new pixel,
and almost every byte is a zero. Once we know which pixel each frame adds, the
deflate tokens follow without searching for matches. The bytes between two new
pixels (a "stretch") all equal the byte one frame earlier, and become:
- a copy of the previous frame (distance = frame size) over the ones just after the
  earlier new pixel, in whole 258-byte matches,
- a run of zeros as matches at distance 1 (~3 bits per 258 bytes, where a copy
  pays ~10 extra bits for its long distance), after a literal 0 if a one precedes it,
- a copy of the previous frame over the ones just before the next new pixel,
then the new pixel is a literal 1. The Huffman code depends only on the video's
shape, so it is built once per shape, with every token's bits in a lookup table.

    python -m pipeline.video_codec [COUNT] [SIZE]   # benchmark against zlib levels 1, 6, 9
"""

from __future__ import annotations

import functools
import heapq
import json
import sys
import time
import zlib

import numpy as np

MAX_MATCH = 258
MIN_MATCH = 3
WINDOW = 32768  # the farthest a match may reach back
END_OF_BLOCK = 256
LITERAL_LENGTH_SYMBOLS = 286
DISTANCE_SYMBOLS = 30
ADLER_MODULUS = 65521
# CMF 0x78: deflate, 32 KiB window; FLG 0x9C: default level, and (CMF * 256 + FLG) % 31 == 0.
ZLIB_HEADER = b"\x78\x9c"
DISTANCE_BASES = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049,
                  3073, 4097, 6145, 8193, 12289, 16385, 24577)  # fmt: skip
# Order in which the code-length code's own lengths are stored (RFC 1951, 3.2.7).
CODE_LENGTH_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _length_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symbol, extra-bit count and extra value of every match length 3..258 (RFC 1951, 3.2.5)."""
    symbol = np.zeros(MAX_MATCH + 1, np.int64)
    extra_bits = np.zeros(MAX_MATCH + 1, np.int64)
    extra_value = np.zeros(MAX_MATCH + 1, np.int64)
    base = MIN_MATCH
    for code in range(257, 285):
        bits = max(0, (code - 261) // 4)
        for length in range(base, min(base + (1 << bits), MAX_MATCH)):
            symbol[length], extra_bits[length], extra_value[length] = code, bits, length - base
        base += 1 << bits
    symbol[MAX_MATCH] = 285  # 258 has its own code with no extra bits
    return symbol, extra_bits, extra_value


LENGTH_SYMBOL, LENGTH_EXTRA_BITS, LENGTH_EXTRA_VALUE = _length_table()


def distance_code(distance: int) -> tuple[int, int, int]:
    """(symbol, extra-bit count, extra value) of a match distance 1..32768."""
    symbol = max(index for index, base in enumerate(DISTANCE_BASES) if base <= distance)
    return symbol, max(0, symbol // 2 - 1), distance - DISTANCE_BASES[symbol]


def huffman_code_lengths(frequencies: np.ndarray, max_bits: int) -> np.ndarray:
    """Code lengths of a complete prefix code over the symbols with frequency > 0, none over max_bits."""
    lengths = np.zeros(len(frequencies), np.int64)
    used = np.flatnonzero(frequencies).tolist()
    if len(used) < 2:
        # Inflate rejects incomplete codes: a lone symbol gets a partner, and both get 1 bit.
        lengths[(used + [symbol for symbol in (0, 1) if symbol not in used])[:2]] = 1
        return lengths
    if len(used) > 1 << max_bits:
        raise ValueError(f"{len(used)} symbols do not fit in codes of {max_bits} bits")
    weights = [int(frequencies[symbol]) for symbol in used]
    while True:
        # Each heap entry: (weight, tie-breaker, symbols below that node); merging deepens them all by one.
        heap = [(weight, index, [index]) for index, weight in enumerate(weights)]
        heapq.heapify(heap)
        depths = [0] * len(used)
        while len(heap) > 1:
            weight_a, tie, below_a = heapq.heappop(heap)
            weight_b, _, below_b = heapq.heappop(heap)
            for index in below_a + below_b:
                depths[index] += 1
            heapq.heappush(heap, (weight_a + weight_b, tie, below_a + below_b))
        if max(depths) <= max_bits:
            break
        # Too deep: flatten the weights and build again (halving keeps every weight >= 1).
        weights = [(weight + 1) // 2 for weight in weights]
    lengths[used] = depths
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (RFC 1951, 3.2.2), bit-reversed: deflate sends codes first bit first
    and everything else least significant bit first, so reversed codes can be packed like any field."""
    codes = np.zeros(len(lengths), np.int64)
    code = 0
    for length in range(1, int(lengths.max()) + 1):
        for symbol in np.flatnonzero(lengths == length).tolist():
            codes[symbol] = int(f"{code:0{length}b}"[::-1], 2)
            code += 1
        code <<= 1
    return codes


def _run_length_code_lengths(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Code lengths as (code-length symbol 0..18, extra value, extra-bit count) (RFC 1951, 3.2.7)."""
    out = []
    index = 0
    while index < len(lengths):
        value = lengths[index]
        run = 1
        while index + run < len(lengths) and lengths[index + run] == value:
            run += 1
        index += run
        if value == 0:
            while run >= 11:
                step = min(run, 138)
                out.append((18, step - 11, 7))
                run -= step
            if run >= 3:
                out.append((17, run - 3, 3))
                run = 0
        else:
            out.append((value, 0, 0))
            run -= 1
            while run >= 3:
                step = min(run, 6)
                out.append((16, step - 3, 2))
                run -= step
        out += [(value, 0, 0)] * run
    return out


def block_header(literal_lengths: np.ndarray, distance_lengths: np.ndarray) -> tuple[list[int], list[int]]:
    """Bit fields (values, bit counts) opening a final dynamic-Huffman block with these code lengths."""
    literal_count = max(257, int(np.flatnonzero(literal_lengths)[-1]) + 1)
    distance_count = max(1, int(np.flatnonzero(distance_lengths)[-1]) + 1)
    runs = _run_length_code_lengths(
        literal_lengths[:literal_count].tolist() + distance_lengths[:distance_count].tolist()
    )
    code_length_lengths = huffman_code_lengths(np.bincount([run[0] for run in runs], minlength=19), max_bits=7)
    code_length_codes = canonical_codes(code_length_lengths)
    stored = [int(code_length_lengths[symbol]) for symbol in CODE_LENGTH_ORDER]
    stored_count = max(4, max(index + 1 for index, length in enumerate(stored) if length))
    # BFINAL = 1, then BTYPE = 2 (dynamic Huffman): 3 bits.
    values = [1 | 2 << 1, literal_count - 257, distance_count - 1, stored_count - 4, *stored[:stored_count]]
    bits = [3, 5, 5, 4, *[3] * stored_count]
    for symbol, extra_value, extra_bits in runs:
        values += [int(code_length_codes[symbol]), extra_value]
        bits += [int(code_length_lengths[symbol]), extra_bits]
    return values, bits


# The pieces of a stretch, in stream order, and whether their matches copy the previous frame
# (distance frame_size) or repeat the byte before (distance 1).
PIECES = ("head copy", "literal 0", "zero run", "tail copy", "new pixel")
PIECE_COPIES = np.array([1, 0, 0, 1, 0])
# A piece is full 258-byte matches, then a remainder: a shorter match, or 1-2 literals whose values
# are the next two data bytes b0, b1, as a pattern b0 + 2 * b1.
PATTERNS = 4
EMPTY_BIT = 2  # pads the rows of Code.token_bits


# Token ids: 0 nothing, 1 and 2 a 258-byte match (at distance 1 or frame_size), then every
# remainder, then the end of the block, then the pieces of the block header.
def full_id(copies):
    return 1 + copies


def remainder_id(copies, pattern, remainder):
    return 3 + (copies * PATTERNS + pattern) * MAX_MATCH + remainder


END_ID = remainder_id(2, 0, 0)


class Code:
    """The Huffman code and the constant arrays shared by every moving-line video of one shape."""

    def __init__(self, frame_count: int, frame_size: int):
        # Expected symbol counts, from the shape alone: each stretch has a zero run of about a frame in
        # 258-byte matches, a couple of copies, a literal 1, often a literal 0, and a remainder match
        # whose length is anything from 3 to 257. Every length symbol stays usable.
        frequencies = np.zeros(LITERAL_LENGTH_SYMBOLS, np.int64)
        frequencies[[0, 1]] = frame_count
        frequencies[END_OF_BLOCK] = 1
        frequencies[285] = frame_count * (frame_size // MAX_MATCH + 2)
        lengths_per_symbol = np.bincount(LENGTH_SYMBOL[MIN_MATCH:MAX_MATCH], minlength=LITERAL_LENGTH_SYMBOLS)
        frequencies[257:285] = np.maximum(1, 2 * frame_count * lengths_per_symbol[257:285] // (MAX_MATCH - MIN_MATCH))
        literal_lengths = huffman_code_lengths(frequencies, max_bits=15)
        literal_codes = canonical_codes(literal_lengths)
        # Two distances, 1 (zero runs) and frame_size (copies): one bit each.
        distance_lengths = np.zeros(DISTANCE_SYMBOLS, np.int64)
        distance_lengths[[0, distance_code(frame_size)[0] or 1]] = 1
        distance_codes = canonical_codes(distance_lengths)

        def literal(byte):
            return int(literal_codes[byte]), int(literal_lengths[byte])

        def match(copies, length):
            symbol = LENGTH_SYMBOL[length]
            distance_symbol, distance_extra_bits, distance_extra = distance_code(frame_size if copies else 1)
            return join([(literal_codes[symbol], literal_lengths[symbol]),
                         (LENGTH_EXTRA_VALUE[length], LENGTH_EXTRA_BITS[length]),
                         (distance_codes[distance_symbol], distance_lengths[distance_symbol]),
                         (distance_extra, distance_extra_bits)])  # fmt: skip

        # Every token the encoder writes, by id, as one (value, bit count) field.
        tokens = {END_ID: literal(END_OF_BLOCK)}
        for copies in (0, 1):
            tokens[full_id(copies)] = match(copies, MAX_MATCH)
            for pattern in range(PATTERNS):
                first, second = literal(pattern & 1), literal(pattern >> 1)
                remainders = [(0, 0), first, join([first, second])]
                remainders += [match(copies, length) for length in range(MIN_MATCH, MAX_MATCH)]
                for remainder, token in enumerate(remainders):
                    tokens[remainder_id(copies, pattern, remainder)] = token
        # The block header goes first, cut into tokens no longer than the others.
        width = max(bits for _, bits in tokens.values())
        header_value, header_bits = join(list(zip(*block_header(literal_lengths, distance_lengths), strict=True)))
        self.header_ids = np.arange(END_ID + 1, END_ID + 1 + -(-header_bits // width))
        for index, token_id in enumerate(self.header_ids.tolist()):
            bits = min(width, header_bits - index * width)
            tokens[token_id] = (header_value >> (index * width)) & ((1 << bits) - 1), bits
        # Each token's bits, least significant first (deflate's order), padded with EMPTY_BIT: packing
        # a stream of tokens is then a lookup, a filter and np.packbits.
        self.token_bits = np.full((len(tokens) + 1, width), EMPTY_BIT, np.uint8)
        for token_id, (value, bits) in tokens.items():
            self.token_bits[token_id, :bits] = [(value >> bit) & 1 for bit in range(bits)]
        self.end_ids = np.array([END_ID])

        # Bounds of the stretches (see _encode_nested): these offsets plus the pixels' places in their frames.
        frame_starts = np.arange(frame_count) * frame_size
        self.bound_offsets = np.zeros((8, frame_count + 1), np.int64)
        self.bound_offsets[[0, 6], 1:] = frame_starts + 1
        self.bound_offsets[[4, 7], :-1] = frame_starts
        self.bound_offsets[5, :-1] = frame_starts + 1
        self.bound_offsets[[4, 5, 7], -1] = frame_count * frame_size
        self.round_up = -(-np.arange(frame_size) // MAX_MATCH) * MAX_MATCH
        self.remainder_base = remainder_id(PIECE_COPIES, 0, 0)[:, None]
        self.pattern_weights = np.array([1, 2]) * MAX_MATCH
        self.items = np.zeros((frame_count + 1, len(PIECES), 2), np.int64)
        self.items[:, :, 0] = full_id(PIECE_COPIES)
        self.counts = np.ones((frame_count + 1, len(PIECES), 2), np.int64)
        self.frame_weights = frame_count - np.arange(frame_count)


def join(fields) -> tuple[int, int]:
    """(value, bit count) fields concatenated, the first in the lowest bits."""
    value = bits = 0
    for field_value, field_bits in fields:
        value |= int(field_value) << bits
        bits += int(field_bits)
    return value, bits


@functools.lru_cache(maxsize=64)
def code_for(frame_count: int, frame_size: int) -> Code:
    return Code(frame_count, frame_size)


@functools.lru_cache(maxsize=64)
def lower_triangle(size: int) -> np.ndarray:
    steps = np.arange(size)
    return (steps[:, None] >= steps).astype(np.uint8)


def new_pixels(frames: np.ndarray) -> np.ndarray | None:
    """Where in its frame each frame adds its pixel, if frame 0 holds a single 1 and each frame is the
    one before plus one more 1, all other bytes 0 (a moving-line video); else None. frames: uint8 [T, F]."""
    frame_count = len(frames)
    last = (frames[-1] != 0).nonzero()[0]
    if len(last) != frame_count or np.count_nonzero(frames) != frame_count * (frame_count + 1) // 2:
        return None
    # Sorted by the frame each turns on in, the last frame's pixels must form a lower triangle of ones
    # over time: then every nonzero byte is a 1 at one of them, from its frame on (count_nonzero rules
    # out any other).
    columns = frames.take(last, axis=1)
    order = columns.argmax(axis=0).argsort()
    if not (columns.take(order, axis=1) == lower_triangle(frame_count)).all():
        return None
    return last[order]


def _encode_nested(flat: np.ndarray, frame_count: int, frame_size: int, pixels: np.ndarray) -> bytes:
    """The zlib stream of a moving-line video, given where each frame adds its pixel (new_pixels)."""
    code = code_for(frame_count, frame_size)
    # Stretch t runs from just after new pixel t-1 to new pixel t (from byte 0 for the first, to the end
    # for the last, which has no new pixel). Its zero gap runs from just after the last one of frame t-1
    # to the first one of frame t. Rows of bounds, a column a stretch: 0 start, 1 head copy end, 2 zero
    # run start, 3 tail copy start, 4 new pixel, 5 just after it, 6 gap start, 7 gap end.
    bounds = np.zeros((8, frame_count + 1), np.int64)
    bounds[0, 1:] = pixels
    bounds[4:6, :-1] = pixels
    np.maximum.accumulate(pixels, out=bounds[6, 1:])
    np.minimum.accumulate(pixels, out=bounds[7, :-1])
    bounds += code.bound_offsets
    start, head_end, zero_start, tail_start, end, _, gap_start, gap_end = bounds
    # Copies cover the ends of the stretch up to the gap, in whole 258-byte matches where the gap
    # leaves room; the zero run takes the rest.
    head, tail = code.round_up.take(bounds[6:3:-2] - bounds[::7])  # gap_start - start, end - gap_end
    np.minimum(start + head, gap_end, out=head_end)
    np.maximum(end - tail, head_end, out=tail_start)
    # No copy may reach before the first frame: stretch 0 has none (its gap is all of it), stretch 1 a
    # tail copy inside frame 1 only.
    tail_start[1] = max(tail_start[1], frame_size)
    # A zero run repeats the byte before it, so that must be a zero: right after a one (or at byte 0),
    # the run starts with a literal 0.
    np.add(head_end, (head_end == gap_start) & (tail_start > head_end), out=zero_start)

    # Piece lengths as full 258-byte matches and a remainder; the remainder's token depends on the
    # next two data bytes too, when it is 1-2 literals (a copy may end on a one).
    full, remainder = np.divmod(bounds[1:6] - bounds[:5], MAX_MATCH)
    next_bytes = flat.take((bounds[:5] + full * MAX_MATCH)[:, :, None] + np.arange(2), mode="clip")
    # Token ids in stream order: per stretch, per piece, the full match id `full` times, then the
    # remainder id once.
    items = code.items.copy()
    items[:, :, 1] = (code.remainder_base + remainder + next_bytes @ code.pattern_weights).T
    counts = code.counts.copy()
    counts[:, :, 0] = full.T
    ids = np.concatenate((code.header_ids, items.ravel().repeat(counts.ravel()), code.end_ids))
    bits = code.token_bits.take(ids, axis=0).ravel()
    stream = np.packbits(bits[bits != EMPTY_BIT], bitorder="little").tobytes()

    # Adler-32 of 0/1 bytes from the positions p of the ones: A = 1 + count, B = size * A - sum(p)
    # (mod 65521). Pixel t is lit in frames t..T-1, at frame_start + pixel in each.
    size = len(flat)
    count = frame_count * (frame_count + 1) // 2
    position_sum = frame_size * (frame_count - 1) * frame_count * (frame_count + 1) // 3
    position_sum += int(pixels @ code.frame_weights)
    adler = ((size * (1 + count) - position_sum) % ADLER_MODULUS) << 16 | (1 + count) % ADLER_MODULUS
    return ZLIB_HEADER + stream + adler.to_bytes(4, "big")


def compress_video(video: np.ndarray) -> bytes:
    """zlib stream of video.tobytes(): fast for moving-line videos [T, ...] (frame 0 one pixel, each
    frame the one before plus one pixel, frames up to 32 KiB), zlib.compress (level 6) for anything else."""
    if not isinstance(video, np.ndarray):
        return zlib.compress(bytes(video))
    frame_count = video.shape[0] if video.ndim >= 2 else 0
    frame_size = video.size // frame_count if frame_count else 0
    if video.dtype != np.uint8 or frame_count < 2 or not 1 <= frame_size <= WINDOW:
        return zlib.compress(video.tobytes())
    frames = np.ascontiguousarray(video).reshape(frame_count, frame_size)
    pixels = new_pixels(frames)
    if pixels is None:
        return zlib.compress(video.tobytes())
    return _encode_nested(frames.reshape(-1), frame_count, frame_size, pixels)


def compress_videos(videos) -> list[bytes]:
    """compress_video of each video (e.g. of a [count, T, S, S, 1] batch)."""
    return [compress_video(video) for video in videos]


class PathCode:
    """A Code's tokens as (value, bit count) pairs, for packing many videos' streams at once."""

    def __init__(self, code: Code):
        width = code.token_bits.shape[1]
        lit = code.token_bits != EMPTY_BIT
        self.token_bit_counts = lit.sum(axis=1).astype(np.int64)
        weights = np.left_shift(np.uint64(1), np.arange(width, dtype=np.uint64))
        self.token_values = (np.where(lit, code.token_bits, 0).astype(np.uint64) * weights).sum(axis=1)
        # Tokens of 0..31 zero bits that end each stream on a 32-bit word: one more id each.
        self.pad_ids = len(self.token_values) + np.arange(32)
        self.token_bit_counts = np.concatenate((self.token_bit_counts, np.arange(32)))
        self.token_values = np.concatenate((self.token_values, np.zeros(32, np.uint64)))
        self.fits = width <= 32  # a token plus a 31-bit shift must fit in 64 bits


@functools.lru_cache(maxsize=64)
def path_code_for(frame_count: int, frame_size: int) -> PathCode:
    return PathCode(code_for(frame_count, frame_size))


def compress_paths(labels: np.ndarray, rows: np.ndarray) -> list[bytes]:
    """The zlib streams of the moving-line videos these paths draw, without drawing them.

    labels [count] (1 = right), rows [count, S]: exactly compress_video(video) of each rendered
    video [S, S, S, 1], but from the S pixels alone and for the whole batch in a few numpy calls:
    the bytes the encoder needs to look at are computed from where each pixel lights up, and the
    tokens of every stream are packed together.
    """
    count, size = rows.shape
    frame_count, frame_size = size, size * size
    if count == 0:
        return []
    path_code = path_code_for(frame_count, frame_size) if frame_size <= WINDOW else None
    if path_code is None or not path_code.fits:
        from pipeline.generator import render  # beyond the fast encoder: draw and compress each video

        return [compress_video(video) for video in render(labels, rows)]
    code = code_for(frame_count, frame_size)
    steps = np.arange(size)
    columns = np.where(labels[:, None] == 1, steps, size - 1 - steps)
    pixels = rows.astype(np.int64) * size + columns  # where in its frame each frame's pixel is, [count, T]

    # The bounds of _encode_nested, for every video at once: [count, 8, T + 1].
    bounds = np.zeros((count, 8, frame_count + 1), np.int64)
    bounds[:, 0, 1:] = pixels
    bounds[:, 4, :-1] = pixels
    bounds[:, 5, :-1] = pixels
    np.maximum.accumulate(pixels, axis=1, out=bounds[:, 6, 1:])
    np.minimum.accumulate(pixels, axis=1, out=bounds[:, 7, :-1])
    bounds += code.bound_offsets
    start, gap_start, gap_end, end = bounds[:, 0], bounds[:, 6], bounds[:, 7], bounds[:, 4]
    head = code.round_up.take(gap_start - start)
    tail = code.round_up.take(end - gap_end)
    head_end = np.minimum(start + head, gap_end)
    tail_start = np.maximum(end - tail, head_end)
    tail_start[:, 1] = np.maximum(tail_start[:, 1], frame_size)
    bounds[:, 1], bounds[:, 3] = head_end, tail_start
    bounds[:, 2] = head_end + ((head_end == gap_start) & (tail_start > head_end))

    full, remainder = np.divmod(bounds[:, 1:6] - bounds[:, :5], MAX_MATCH)
    # The two data bytes after each piece's full matches: byte q of a video is 1 when the pixel at
    # q % frame_size lights up at or before frame q // frame_size.
    positions = np.clip((bounds[:, :5] + full * MAX_MATCH)[..., None] + np.arange(2), 0, frame_count * frame_size - 1)
    lit_at = np.full((count, frame_size), frame_count, np.int64)
    np.put_along_axis(lit_at, pixels, steps[None, :], axis=1)
    frame, pixel = np.divmod(positions, frame_size)
    next_bytes = np.take_along_axis(lit_at, pixel.reshape(count, -1), axis=1).reshape(frame.shape) <= frame
    items = np.broadcast_to(code.items, (count, *code.items.shape)).copy()
    remainder_ids = code.remainder_base + remainder + next_bytes.astype(np.int64) @ code.pattern_weights
    items[:, :, :, 1] = remainder_ids.transpose(0, 2, 1)
    counts = np.broadcast_to(code.counts, (count, *code.counts.shape)).copy()
    counts[:, :, :, 0] = full.transpose(0, 2, 1)

    # Every stream's token ids in order: header, pieces, end of block, then zero bits up to a 32-bit word.
    body_ids, body_counts = items.reshape(count, -1), counts.reshape(count, -1)
    header = np.broadcast_to(code.header_ids, (count, len(code.header_ids)))
    fixed_bits = int(path_code.token_bit_counts[code.header_ids].sum() + path_code.token_bit_counts[END_ID])
    stream_bits = fixed_bits + (path_code.token_bit_counts.take(body_ids) * body_counts).sum(axis=1)
    pad = path_code.pad_ids.take(-stream_bits % 32)
    ids = np.concatenate((header, body_ids, np.full((count, 1), END_ID), pad[:, None]), axis=1)
    repeats = np.concatenate((np.ones_like(header), body_counts, np.ones((count, 2), np.int64)), axis=1)
    ids = ids.ravel().repeat(repeats.ravel())
    # Pack: each token's value shifted to its bit offset, summed into 32-bit words (the bits never
    # overlap, so a sum is an OR, and bincount's float64 sums stay exact below 2**53).
    bit_counts = path_code.token_bit_counts.take(ids)
    offsets = np.cumsum(bit_counts) - bit_counts
    word, shift = offsets >> 5, (offsets & 31).astype(np.uint64)
    shifted = path_code.token_values.take(ids) << shift
    total_words = int((offsets[-1] + bit_counts[-1]) >> 5) + 1
    words = np.bincount(word, weights=(shifted & np.uint64(0xFFFFFFFF)).astype(np.float64), minlength=total_words)
    words += np.bincount(word + 1, weights=(shifted >> np.uint64(32)).astype(np.float64), minlength=total_words + 1)[
        :total_words
    ]
    packed = words.astype(np.uint32).astype("<u4").tobytes()

    # Adler-32 as in _encode_nested.
    video_bytes = frame_count * frame_size
    ones = frame_count * (frame_count + 1) // 2
    position_sum = frame_size * (frame_count - 1) * frame_count * (frame_count + 1) // 3 + pixels @ code.frame_weights
    adler = ((video_bytes * (1 + ones) - position_sum) % ADLER_MODULUS) << 16 | (1 + ones) % ADLER_MODULUS
    adler_bytes = adler.astype(">u4").tobytes()
    word_starts = np.concatenate(([0], np.cumsum((stream_bits + 31) >> 5)))[:-1] * 4
    lengths = (stream_bits + 7) >> 3
    return [
        ZLIB_HEADER + packed[begin : begin + length] + adler_bytes[4 * index : 4 * index + 4]
        for index, (begin, length) in enumerate(zip(word_starts.tolist(), lengths.tolist(), strict=True))
    ]


def benchmark(count: int = 1000, size: int = 50, seed: int = 0, repeats: int = 3) -> dict:
    """Videos/s (one core, CPU time, best of `repeats`) and mean bytes: zlib levels 1, 6, 9 and ours."""
    from pipeline.generator import generate

    videos = list(generate(seed, "train", 0, count, size)["video"])
    encoders = {f"zlib{level}": functools.partial(lambda video, level: zlib.compress(video.tobytes(), level),
                                                  level=level) for level in (1, 6, 9)}  # fmt: skip
    encoders["ours"] = compress_video
    results = {}
    for name, encode in encoders.items():
        best = float("inf")
        for _ in range(repeats):
            began = time.process_time()
            outputs = [encode(video) for video in videos]
            best = min(best, time.process_time() - began)
        assert all(zlib.decompress(out) == video.tobytes() for out, video in zip(outputs, videos, strict=True))
        results[name] = {"videos_per_s": count / best, "mean_bytes": float(np.mean([len(out) for out in outputs]))}
    for name, result in results.items():
        speedup = result["videos_per_s"] / results["zlib6"]["videos_per_s"]
        print(f"{name:>6}: {result['videos_per_s']:9,.0f} videos/s ({speedup:5.2f}x zlib6), "
              f"{result['mean_bytes']:7.1f} bytes a video")  # fmt: skip
    summary = {"count": count, "size": size, **{f"{name}_{key}": value for name, result in results.items()
                                               for key, value in result.items()}}  # fmt: skip
    summary["speedup_vs_zlib6"] = results["ours"]["videos_per_s"] / results["zlib6"]["videos_per_s"]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    benchmark(*(int(arg) for arg in sys.argv[1:3]))
