/* CRC-32C (Castagnoli), as in iSCSI/ext4/btrfs: the per-page checksum of lazyvm
 * snapshots. Uses the SSE4.2 crc32 instruction when the CPU has it. */
#ifndef LAZYVM_CRC32C_H
#define LAZYVM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* crc32c(0, "123456789", 9) == 0xe3069283 */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

#endif
