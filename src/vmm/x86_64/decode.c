#include "decode.h"

#include <stdint.h>

/* Legacy prefixes that do not change what an instruction touches: operand and
 * address size, segment overrides, REP/REPNE (string instructions only, see
 * below). LOCK is excluded on purpose: a locked instruction writes. */
static bool is_prefix(unsigned char b)
{
	switch (b) {
	case 0x66:
	case 0x67: /* sizes */
	case 0x2e:
	case 0x36:
	case 0x3e:
	case 0x26:
	case 0x64:
	case 0x65: /* segments */
	case 0xf2:
	case 0xf3: /* REPNE, REP */ return true;
	default: return false;
	}
}

bool insn_undoable_read(const unsigned char *b, size_t len)
{
	size_t i = 0;

	while (i < len && is_prefix(b[i]))
		i++;
	if (i < len && (b[i] & 0xf0) == 0x40) /* REX */
		i++;
	if (i >= len)
		return false;
	switch (b[i]) {
	case 0x8a:
	case 0x8b: /* MOV r, r/m */
	case 0x3a:
	case 0x3b: /* CMP r, r/m */
	case 0x38:
	case 0x39: /* CMP r/m, r: compares, writes nothing */
	case 0x84:
	case 0x85: /* TEST r/m, r */
	case 0xac:
	case 0xad: /* LODS: RAX, RSI */
	case 0xae:
	case 0xaf: /* SCAS: RDI, RCX, flags */
	case 0xa6:
	case 0xa7: /* CMPS: RSI, RDI, RCX, flags */ return true;
	case 0x0f:
		if (i + 1 >= len)
			return false;
		switch (b[i + 1]) {
		case 0xb6:
		case 0xb7:
		case 0xbe:
		case 0xbf: /* MOVZX, MOVSX */ return true;
		default: return false;
		}
	default: return false;
	}
}
