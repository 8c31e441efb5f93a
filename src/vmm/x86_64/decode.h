/* Just enough x86-64 decoding to tell whether an instruction that read guest
 * memory can be undone by restoring the vCPU's registers: it reads memory and
 * changes nothing but general registers, RIP and flags. Such an access may be
 * turned into an asynchronous page fault (the instruction is completed with
 * placeholder bytes, the registers put back, the #PF injected: the task
 * re-executes it after "page ready"). Anything else takes the synchronous path. */
#ifndef LAZYVM_DECODE_H
#define LAZYVM_DECODE_H

#include <stdbool.h>
#include <stddef.h>

/* bytes: up to 15 bytes at RIP (len of them valid). */
bool insn_undoable_read(const unsigned char *bytes, size_t len);

#endif
