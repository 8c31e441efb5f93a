/* The outcome of a run, restore or migration: one line each, or one JSON object. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"

static double ms(uint64_t from, uint64_t to)
{
	return to > from ? (double)(to - from) / 1e6 : 0;
}

static void print_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

void cli_report(const char *what, const char *load, uint64_t t0, const struct vmm_outcome *o,
                bool json)
{
	uint64_t end = o->t_done_ns ? o->t_done_ns : lv_now_ns();

	if (json) {
		printf(
		    "{\"ok\":%s,\"load\":\"%s\",\"restore_ms\":%.3f,\"run_ms\":%.3f,\"total_"
		    "ms\":%.3f,"
		    "\"faults\":%llu,\"pages_installed\":%llu,\"bytes_read\":%llu,"
		    "\"fault_p50_us\":%.1f,\"fault_p99_us\":%.1f,\"max_rss_kb\":%llu,"
		    "\"results\":%u,\"results_failed\":%u,\"snapshot_written\":%s,"
		    "\"exit_backend\":\"%s\",\"apf_not_present\":%llu,\"apf_ready\":%llu,"
		    "\"apf_spurious\":%llu,\"apf_refused_unsafe\":%llu,\"apf_refused_state\":%llu,"
		    "\"apf_user_async\":%llu,\"apf_kernel_async\":%llu,\"apf_kernel_sync\":%llu,"
		    "\"guest_apf_not_present\":%llu,\"guest_apf_ready\":%llu,"
		    "\"apf_io_wakeups\":%llu,\"apf_notify_signals\":%llu,\"apf_sync\":%llu,"
		    "\"apf_sync_ms\":%.3f,\"apf_async_ms\":%.3f,\"ws_recorded\":%llu,"
		    "\"ws_prefetched\":%llu,\"prefetch_ms\":%.3f,\"pages_background\":%llu,"
		    "\"apf_note\":",
		    o->ok ? "true" : "false", load, ms(t0, o->t_first_entry_ns),
		    ms(o->t_run_start_ns, o->t_done_ns), ms(t0, end), (unsigned long long)o->faults,
		    (unsigned long long)o->pages_installed, (unsigned long long)o->bytes_read,
		    (double)o->fault_p50_ns / 1e3, (double)o->fault_p99_ns / 1e3,
		    (unsigned long long)o->max_rss_kb, o->results, o->results_failed,
		    o->snapshot_written ? "true" : "false", o->exit_backend,
		    (unsigned long long)o->apf_not_present, (unsigned long long)o->apf_ready,
		    (unsigned long long)o->apf_spurious, (unsigned long long)o->apf_refused_unsafe,
		    (unsigned long long)o->apf_refused_state, (unsigned long long)o->apf_user_async,
		    (unsigned long long)o->apf_kernel_async, (unsigned long long)o->apf_kernel_sync,
		    (unsigned long long)o->guest_apf_not_present,
		    (unsigned long long)o->guest_apf_ready, (unsigned long long)o->apf_io_wakeups,
		    (unsigned long long)o->apf_notify_signals, (unsigned long long)o->apf_sync,
		    (double)o->apf_sync_ns / 1e6, (double)o->apf_async_ns / 1e6,
		    (unsigned long long)o->ws_recorded, (unsigned long long)o->ws_prefetched,
		    (double)o->prefetch_ms_x1000 / 1e3, (unsigned long long)o->pages_background);
		print_json_string(o->apf_note);
		printf(",\"apf_mode\":");
		print_json_string(o->apf_mode);
		printf(",\"apf_impl\":");
		print_json_string(o->apf_impl);
		printf(",\"hlt_in_guest\":%s", o->hlt_in_guest ? "true" : "false");
		printf(",\"apf_msr_filter\":%s,\"apf_async\":%llu,\"apf_kvm_exits\":%llu,\"apf_kvm_"
		       "accepted\":%llu,"
		       "\"apf_kvm_accept_refused\":%llu,\"apf_kvm_ready\":%llu,"
		       "\"apf_kvm_ready_refused\":%llu,\"apf_kvm_ring_taken\":%llu,"
		       "\"apf_kvm_ring_completed\":%llu",
		       o->apf_msr_filter ? "true" : "false", (unsigned long long)o->apf_not_present,
		       (unsigned long long)o->apf_kvm_exits,
		       (unsigned long long)o->apf_kvm_accepted,
		       (unsigned long long)o->apf_kvm_accept_refused,
		       (unsigned long long)o->apf_kvm_ready,
		       (unsigned long long)o->apf_kvm_ready_refused,
		       (unsigned long long)o->apf_kvm_ring_taken,
		       (unsigned long long)o->apf_kvm_ring_completed);
		printf(",\"huge_collapsed\":%llu,\"pages_zero_known\":%llu,\"blocktime_all_ms\":%."
		       "3f,\"blocktime_ms\":[",
		       (unsigned long long)o->huge_collapsed,
		       (unsigned long long)o->pages_zero_known, (double)o->blocktime_all_ns / 1e6);
		for (unsigned i = 0; i < o->nvcpus && i < 8; i++)
			printf("%s%.3f", i ? "," : "", (double)o->blocktime_ns[i] / 1e6);
		printf("],\"blocktime_faults\":[");
		for (unsigned i = 0; i < o->nvcpus && i < 8; i++)
			printf("%s%llu", i ? "," : "", (unsigned long long)o->blocktime_faults[i]);
		printf(
		    "],\"snapshot_ms\":%.3f,\"migrated\":%s,\"state_bytes\":%llu,\"downtime_ms\":%."
		    "3f,"
		    "\"transfer_ms\":%.3f,\"pages\":%llu,\"pages_zero\":%llu,\"bytes_sent\":%llu,"
		    "\"nbd_requests\":%llu,\"migrate_note\":",
		    (double)o->snapshot_ns / 1e6, o->migrated ? "true" : "false",
		    (unsigned long long)o->mig_state_bytes, (double)o->mig_downtime_ns / 1e6,
		    (double)o->mig_transfer_ns / 1e6, (unsigned long long)o->mig_pages,
		    (unsigned long long)o->mig_pages_zero, (unsigned long long)o->mig_bytes_sent,
		    (unsigned long long)o->mig_requests);
		print_json_string(o->migrate_note);
		printf(",\"error\":");
		print_json_string(o->error);
		printf("}\n");
		return;
	}
	if (!o->ok) {
		fprintf(stderr, "lazyvm %s: %s\n", what, o->error);
		return;
	}
	if (o->migrated) {
		printf("lazyvm %s: migrated: downtime %.1f ms (vCPUs parked -> running at the "
		       "destination), state %llu KiB; memory: %llu of %llu pages sent (%.1f MiB in "
		       "%llu requests), %llu zero pages not sent; every page there %.1f ms later\n",
		       what, (double)o->mig_downtime_ns / 1e6,
		       (unsigned long long)(o->mig_state_bytes >> 10),
		       (unsigned long long)(o->mig_pages - o->mig_pages_zero),
		       (unsigned long long)o->mig_pages, (double)o->mig_bytes_sent / 1048576.0,
		       (unsigned long long)o->mig_requests, (unsigned long long)o->mig_pages_zero,
		       (double)o->mig_transfer_ns / 1e6);
		return;
	}
	if (o->snapshot_written) {
		printf("lazyvm %s: snapshot written at the snapshot point after %.1f ms\n", what,
		       ms(t0, lv_now_ns()));
		return;
	}
	printf("lazyvm %s: ok: %u task(s) verified; first guest instruction after %.1f ms, run "
	       "phase %.1f ms\n",
	       what, o->results, ms(t0, o->t_first_entry_ns), ms(o->t_run_start_ns, o->t_done_ns));
	if (o->exit_backend[0])
		printf("lazyvm %s: faults reach lazyvm as vCPU exits (exit backend: %s)\n", what,
		       o->exit_backend);
	if (o->apf_impl[0])
		printf("lazyvm %s: apf: %s (%s)\n", what, o->apf_mode, o->apf_impl);
	if (o->apf_kvm_exits || o->apf_kvm_ring_taken)
		printf("lazyvm %s: KVM's async PF for userfaults: %llu exits flagged APF, %llu "
		       "accepted, %llu ready; %llu from the notify ring, %llu completed\n",
		       what, (unsigned long long)o->apf_kvm_exits,
		       (unsigned long long)o->apf_kvm_accepted,
		       (unsigned long long)o->apf_kvm_ready,
		       (unsigned long long)o->apf_kvm_ring_taken,
		       (unsigned long long)o->apf_kvm_ring_completed);
	if (o->apf_not_present || o->guest_apf_not_present)
		printf("lazyvm %s: async page faults: %llu injected, %llu page-ready, %llu "
		       "spurious; the "
		       "guest took %llu not-present and %llu ready\n",
		       what, (unsigned long long)o->apf_not_present,
		       (unsigned long long)o->apf_ready, (unsigned long long)o->apf_spurious,
		       (unsigned long long)o->guest_apf_not_present,
		       (unsigned long long)o->guest_apf_ready);
	if (o->apf_note[0])
		printf("lazyvm %s: %s\n", what, o->apf_note);
	if (strcmp(load, "boot") != 0)
		printf("lazyvm %s: memory (%s): %llu faults, %llu pages installed, %llu MiB read, "
		       "fault "
		       "p50 %.1f us, peak RSS %llu MiB\n",
		       what, load, (unsigned long long)o->faults,
		       (unsigned long long)o->pages_installed,
		       (unsigned long long)(o->bytes_read >> 20), (double)o->fault_p50_ns / 1e3,
		       (unsigned long long)(o->max_rss_kb >> 10));
	if (o->mig_state_bytes)
		printf("lazyvm %s: migration: state %llu KiB; vCPUs ran %.1f ms after it came; "
		       "%llu zero pages never sent; every page here after %.1f ms\n",
		       what, (unsigned long long)(o->mig_state_bytes >> 10),
		       (double)o->mig_downtime_ns / 1e6, (unsigned long long)o->pages_zero_known,
		       (double)o->mig_transfer_ns / 1e6);
	if (o->nvcpus) {
		printf("lazyvm %s: blocktime (vCPUs waiting for pages):", what);
		for (unsigned i = 0; i < o->nvcpus && i < 8; i++)
			printf(" vCPU %u %.1f ms (%llu waits);", i,
			       (double)o->blocktime_ns[i] / 1e6,
			       (unsigned long long)o->blocktime_faults[i]);
		printf(" all at once %.1f ms\n", (double)o->blocktime_all_ns / 1e6);
	}
}
