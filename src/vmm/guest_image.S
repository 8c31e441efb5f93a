/* The bundled guest kernel, embedded in the lazyvm binary (the default for
 * `lazyvm run`). GUEST_BIN_PATH comes from the Makefile. */
	.section .rodata
	.balign 4096
	.global lazyvm_guest_image
	.global lazyvm_guest_image_end
lazyvm_guest_image:
	.incbin GUEST_BIN_PATH
lazyvm_guest_image_end:
	.section .note.GNU-stack, "", @progbits
