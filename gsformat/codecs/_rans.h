/* The rANS byte-plane decoder of gsformat.lattice-rans (see _rans.c). */
#ifndef GSFORMAT_RANS_H
#define GSFORMAT_RANS_H
#include <stddef.h>
#include <stdint.h>

/* The bytes after the lattice header → uint8 planes out [n_planes, n]; 1 on success, 0 for a
 * malformed stream (nothing promised in out). One call at a time (static scratch). */
int rans_decode_planes(const uint8_t *data, size_t size, int n_planes, uint32_t n,
                       uint8_t *out);

/* Once, before decoding: builds the AVX2 path's table; avx2: use it (the CPU has AVX2). */
void rans_init(int avx2);
extern int rans_use_avx2; /* the AVX2 path on (1) or off (0) */

#endif
