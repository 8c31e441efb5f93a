/* Which instructions may become an async page fault (undoable reads). */
#include "../../src/vmm/x86_64/decode.h"
#include "test.h"

#define INSN(...)                                                                                  \
	((const unsigned char[]){__VA_ARGS__}), sizeof((const unsigned char[]){__VA_ARGS__})

static void test_undoable_reads(void)
{
	CHECK(insn_undoable_read(INSN(0x48, 0x8b, 0x07))); /* mov (%rdi),%rax */
	CHECK(insn_undoable_read(INSN(0x8a, 0x06)));       /* mov (%rsi),%al */
	CHECK(insn_undoable_read(INSN(0xf3, 0x48, 0xaf))); /* repe scasq */
	CHECK(insn_undoable_read(INSN(0xf3, 0xa6)));       /* repe cmpsb */
	CHECK(insn_undoable_read(INSN(0x48, 0xad)));       /* lodsq */
	CHECK(insn_undoable_read(INSN(0x0f, 0xb6, 0x07))); /* movzbl (%rdi),%eax */
	CHECK(insn_undoable_read(INSN(0x48, 0x39, 0x07))); /* cmp %rax,(%rdi) */
	CHECK(insn_undoable_read(
	    INSN(0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0))); /* mov %gs:0,%rax */
}

static void test_everything_else_is_synchronous(void)
{
	CHECK(!insn_undoable_read(INSN(0x48, 0x89, 0x07))); /* mov %rax,(%rdi): writes */
	CHECK(!insn_undoable_read(INSN(0xf3, 0x48, 0xa5))); /* rep movsq: writes */
	CHECK(!insn_undoable_read(INSN(0xf3, 0x48, 0xab))); /* rep stosq: writes */
	CHECK(!insn_undoable_read(INSN(0xf0, 0x48, 0x0f, 0xc1, 0x07))); /* lock xadd */
	CHECK(!insn_undoable_read(INSN(0x48, 0x01, 0x07)));             /* add %rax,(%rdi): RMW */
	CHECK(!insn_undoable_read(INSN(0x8f, 0x07)));                   /* pop (%rdi) */
	CHECK(!insn_undoable_read(INSN(0xff, 0x37)));                   /* push (%rdi) */
	CHECK(!insn_undoable_read(INSN(0x8e, 0x17)));                   /* mov (%rdi),%ss */
	CHECK(!insn_undoable_read(INSN(0x0f, 0xc7, 0x0f)));             /* cmpxchg16b */
	CHECK(!insn_undoable_read(INSN(0x66)));                         /* prefix only */
	CHECK(!insn_undoable_read(INSN(0x0f)));                         /* truncated */
	CHECK(!insn_undoable_read((const unsigned char *)"", 0));
}

TEST_MAIN(TEST(test_undoable_reads), TEST(test_everything_else_is_synchronous))
