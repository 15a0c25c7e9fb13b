/* CRC-32C for Kafka record batches, included by _core.pyx. The SSE4.2
   instruction does ~8 bytes a cycle; without it (another CPU) the caller
   falls back to aiokafka's crc32c. */
#ifndef ENG_KAFKA_H
#define ENG_KAFKA_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static uint32_t eng_crc32c_hw(const unsigned char* p, size_t n) {
    uint64_t c = 0xFFFFFFFFu;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}

static int eng_crc32c_hw_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#else
static uint32_t eng_crc32c_hw(const unsigned char* p, size_t n) { (void)p; (void)n; return 0; }
static int eng_crc32c_hw_ok(void) { return 0; }
#endif

#endif
