/* The key-width dependent part of _spp_kernel.c, included once per width with KEY (signed
 * integer), UKEY (its unsigned twin) and SUFFIX (16 or 32) defined. */

#define KEY_BITS ((int)(8 * sizeof(KEY)))
#define MAGNITUDE ((UKEY)(((UKEY)1 << (KEY_BITS - 1)) - 1))

/* Invert the magnitude bits of negative numbers: float order becomes integer order, and the
 * same flip maps keys back to float bits (keys._flip_negative_). */
static inline UKEY NAME(flip_)(UKEY bits) {
    return (UKEY)(bits ^ ((UKEY)(0u - (bits >> (KEY_BITS - 1))) & MAGNITUDE));
}

static INLINE void NAME(max_into_)(KEY *restrict into, const KEY *restrict from,
                                   int64_t count) {
    for (int64_t q = 0; q < count; q++) into[q] = from[q] > into[q] ? from[q] : into[q];
}

CLONES static void NAME(to_keys_)(const void *task_, int64_t begin, int64_t end, void *scratch) {
    (void)scratch;
    const struct keys_task *task = task_;
    const int64_t channels = task->channels;
    const KEY lowest = (KEY)task->lowest, nan = (KEY)task->nan;
    KEY *keys = (KEY *)task->dst + begin * channels;
    NAME(transpose_u)((const UKEY *)task->src + begin, task->cells, (UKEY *)keys, channels,
                      channels, end - begin);
    for (int64_t q = 0; q < (end - begin) * channels; q++) { /* in place, while in cache */
        KEY key = (KEY)NAME(flip_)((UKEY)keys[q]);
        keys[q] = key < lowest ? nan : key;
    }
}

/* A level computed from the map: for each bin row, the max over its rows across the window's
 * columns (contiguous in channels-last keys), then each bin the max over its columns. */
static INLINE void NAME(compute_level_)(const struct pool_task *t, int64_t w, int64_t l,
                                        KEY *pooled, KEY *rowmax) {
    const int64_t channels = t->channels, n = t->level_n[l];
    const int64_t x1 = t->cells[4 * w], x2 = t->cells[4 * w + 2], map_width = t->map_width[w];
    const int64_t span = (x2 - x1 + 1) * channels;
    const KEY *map = (const KEY *)t->keys + t->base[w] * channels;
    const int64_t *xb = t->xbins + (w * t->computed_bins + t->level_bin_first[l]) * 2;
    const int64_t *yb = t->ybins + (w * t->computed_bins + t->level_bin_first[l]) * 2;
    KEY *level = pooled + t->level_row_first[l] * channels;
    for (int64_t i = 0; i < n; i++) {
        const KEY *row = map + (yb[2 * i] * map_width + x1) * channels;
        const KEY *rows_max = row;
        if (yb[2 * i + 1] - yb[2 * i] > 1) {
            memcpy(rowmax, row, (size_t)span * sizeof(KEY));
            for (int64_t y = yb[2 * i] + 1; y < yb[2 * i + 1]; y++)
                NAME(max_into_)(rowmax, row += map_width * channels, span);
            rows_max = rowmax;
        }
        for (int64_t j = 0; j < n; j++) {
            KEY *bin = level + (i * n + j) * channels;
            const KEY *col = rows_max + (xb[2 * j] - x1) * channels;
            memcpy(bin, col, (size_t)channels * sizeof(KEY));
            for (int64_t x = xb[2 * j] + 1; x < xb[2 * j + 1]; x++)
                NAME(max_into_)(bin, col += channels, channels);
        }
    }
}

/* A level derived from a finer one with r times its bins per side: bin (i, j) is the union of
 * the finer bins (i*r + a, j*r + b), a, b < r (bins._plan), so its max is theirs. */
static INLINE void NAME(derive_level_)(const struct pool_task *t, int64_t l, KEY *pooled) {
    const int64_t channels = t->channels, n = t->level_n[l], source = t->level_source[l];
    const int64_t finer = t->level_n[source], r = finer / n;
    const KEY *from = pooled + t->level_row_first[source] * channels;
    KEY *level = pooled + t->level_row_first[l] * channels;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            KEY *bin = level + (i * n + j) * channels;
            memcpy(bin, from + (i * r * finer + j * r) * channels, (size_t)channels * sizeof(KEY));
            for (int64_t a = 0; a < r; a++)
                for (int64_t b = 0; b < r; b++)
                    if (a | b)
                        NAME(max_into_)(bin, from + ((i * r + a) * finer + j * r + b) * channels,
                                        channels);
        }
}

/* One level's pooled float bits [n*n, C] -> output values, channel-major [C, n*n]. */
static void NAME(write_level_)(const struct pool_task *t, int64_t w, int64_t l,
                               const UKEY *pooled, uint32_t *values) {
    const int64_t channels = t->channels, bins = t->level_n[l] * t->level_n[l];
    const UKEY *bits = pooled + t->level_row_first[l] * channels;
    const int64_t count = bins * channels, first = w * t->out_row + t->level_out_first[l];
    if (t->out_kind == OUT_SAME) {
        NAME(transpose_u)(bits, channels, (UKEY *)t->out + first, bins, bins, channels);
        return;
    }
    if (t->out_kind == OUT_HALF_F32)
        halves_to_floats((const uint16_t *)bits, values, count);
    else
        for (int64_t q = 0; q < count; q++) values[q] = (uint32_t)bits[q] << 16;
    transpose_u32(values, channels, (uint32_t *)t->out + first, bins, bins, channels);
}

CLONES static void NAME(pool_windows_)(const void *task_, int64_t begin, int64_t end,
                                       void *scratch) {
    const struct pool_task *t = task_;
    KEY *rowmax = scratch;
    KEY *pooled = rowmax + t->max_width * t->channels;
    uint32_t *values = align_up(pooled + t->pooled_rows * t->channels);
    const int64_t count = t->pooled_rows * t->channels;
    for (int64_t w = begin; w < end; w++) {
        for (int64_t k = 0; k < t->levels; k++) {
            int64_t l = t->order[k];
            if (t->level_source[l] < 0)
                NAME(compute_level_)(t, w, l, pooled, rowmax);
            else
                NAME(derive_level_)(t, l, pooled);
        }
        UKEY *bits = (UKEY *)pooled; /* keys back to float bits, in place */
        for (int64_t q = 0; q < count; q++) bits[q] = NAME(flip_)(bits[q]);
        for (int64_t l = 0; l < t->levels; l++) NAME(write_level_)(t, w, l, bits, values);
    }
}

#undef KEY_BITS
#undef MAGNITUDE
