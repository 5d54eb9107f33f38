/*
 * Formats libxdp's printf-style diagnostics in C, where va_list is portable,
 * and hands the text to the broker's logger (broker/src/xdp.rs). Rust has no
 * stable va_list: formatting there would tie the broker to one target's
 * va_list layout.
 */
#include <stdarg.h>
#include <stdio.h>

/* libxdp's print callback type; its first parameter is an enum (int-sized). */
typedef int (*libxdp_print_fn_t)(int level, const char *fmt, va_list args);
libxdp_print_fn_t libxdp_set_print(libxdp_print_fn_t fn);

static void (*xsk_sink)(int level, const char *msg);

static int xsk_forward(int level, const char *fmt, va_list args)
{
	char buf[512];

	if (vsnprintf(buf, sizeof(buf), fmt, args) < 0)
		return 0;
	if (xsk_sink)
		xsk_sink(level, buf);
	return 0;
}

/* Route libxdp's messages to `sink` (called with the level and the text). */
void xsk_broker_route_libxdp_print(void (*sink)(int level, const char *msg))
{
	xsk_sink = sink;
	libxdp_set_print(xsk_forward);
}
