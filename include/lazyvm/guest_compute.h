/* The compute:N workload's function, exactly, so that the VMM and the tests
 * can recompute the value a guest reports. Self-contained (stdint.h only).
 *
 *   x_0     = guest_compute_x0(seed, task_index)
 *           = seed ^ task_index ^ 0x9e3779b97f4a7c15  (task_index from 0, in
 *                                                      workload order)
 *   x_{i+1} = guest_compute_step(x_i)                (all arithmetic mod 2^64)
 *   guest_compute_step(x):
 *       x ^= x >> 12;  x ^= x << 25;  x ^= x >> 27;
 *       return x * 0x2545f4914f6cdd1d;
 *
 * i.e. one xorshift64* step (Vigna) whose output is fed back as the next
 * input. The prepare phase runs steps 1 .. N/2 (N/2 rounded down) before the
 * snapshot point, keeping x in memory; the run phase runs the remaining
 * N - N/2 steps and reports x_N as the RESULT's arg2 (arg3 = N).
 *
 * The constant in x_0 is there because 0 is the step's fixed point: plain
 * seed ^ task_index is 0 for the default seed 1 and task 1, and a result that
 * stays 0 would prove nothing about the task's state surviving a restore.
 */
#ifndef GUEST_COMPUTE_H
#define GUEST_COMPUTE_H

#include <stdint.h>

#define GUEST_COMPUTE_X0_SALT 0x9e3779b97f4a7c15ull

static inline uint64_t guest_compute_x0(uint64_t seed, uint32_t task_index)
{
	return seed ^ task_index ^ GUEST_COMPUTE_X0_SALT;
}

static inline uint64_t guest_compute_step(uint64_t x)
{
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	return x * 0x2545f4914f6cdd1dull;
}

static inline uint64_t guest_compute(uint64_t x, uint64_t steps)
{
	while (steps--)
		x = guest_compute_step(x);
	return x;
}

#endif
