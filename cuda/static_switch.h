// SPDX-License-Identifier: Apache-2.0
/*
 * static_switch.h - run-time values to compile-time template arguments, the pattern of
 * flash-attention's static_switch.h: each macro evaluates COND once and calls the
 * lambda it is given with NAME as a constexpr, so a dispatch ladder is written once.
 *
 *     GF_BOOL_SWITCH(cut, kCut, [&] { launch<T, kCut>(...); });
 *
 * (`constexpr static`: a lambda may read a static constexpr without capturing it.)
 */
#pragma once

#include "gaussfield.h"

/* A bool. */
#define GF_BOOL_SWITCH(COND, NAME, ...)        \
    [&] {                                      \
        if (COND) {                            \
            constexpr static bool NAME = true; \
            return __VA_ARGS__();              \
        } else {                               \
            constexpr static bool NAME = false; \
            return __VA_ARGS__();              \
        }                                      \
    }()

/* A gf_dtype: T is float or double. */
#define GF_DTYPE_SWITCH(DTYPE, T, ...)  \
    [&] {                               \
        if ((DTYPE) == GF_FLOAT32) {    \
            using T = float;            \
            return __VA_ARGS__();       \
        } else {                        \
            using T = double;           \
            return __VA_ARGS__();       \
        }                               \
    }()

/* A channel block (common.cuh's channel_block_for): 1, 4 or 8. */
#define GF_CHANNEL_BLOCK_SWITCH(CB_VALUE, NAME, ...) \
    [&] {                                            \
        if ((CB_VALUE) == 8) {                       \
            constexpr static int NAME = 8;           \
            return __VA_ARGS__();                    \
        } else if ((CB_VALUE) == 4) {                \
            constexpr static int NAME = 4;           \
            return __VA_ARGS__();                    \
        } else {                                     \
            constexpr static int NAME = 1;           \
            return __VA_ARGS__();                    \
        }                                            \
    }()

/* A register-blocking factor in {8, 4, 2, 1} (any other value: 1), among those at most
 * MAX with NAME * CB <= LIMIT (MAX, CB and LIMIT constexpr): the ladder instantiates no
 * kernel past those bounds.  (A function template, not a bare if constexpr: outside a
 * template a discarded branch is still instantiated.) */
#define GF_BLOCKING_SWITCH(VALUE, MAX, CB, LIMIT, NAME, ...)                      \
    gf_switch::blocking<(MAX), (CB), (LIMIT)>((VALUE), [&](auto gf_tag_) {          \
        constexpr static int NAME = decltype(gf_tag_)::value;                      \
        return __VA_ARGS__();                                                      \
    })

#include <type_traits>

namespace gf_switch {

template <int MAX, int CB, int LIMIT, typename F>
decltype(auto) blocking(int value, F &&f) {
    if constexpr (8 <= MAX && 8 * CB <= LIMIT)
        if (value == 8) return f(std::integral_constant<int, 8>{});
    if constexpr (4 <= MAX && 4 * CB <= LIMIT)
        if (value == 4) return f(std::integral_constant<int, 4>{});
    if constexpr (2 <= MAX && 2 * CB <= LIMIT)
        if (value == 2) return f(std::integral_constant<int, 2>{});
    return f(std::integral_constant<int, 1>{});
}

}  // namespace gf_switch
