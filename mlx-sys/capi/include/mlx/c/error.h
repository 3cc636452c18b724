/* zmlx mlx-sys: error reporting of the C API (mlx-c 0.7.0 compatible).
 *
 * Every C API function that can fail returns a non-zero status (or an empty handle) and reports the
 * message to the current error handler. The default handler never exits: it keeps the message, per
 * thread, where mlx_last_error() returns it. */
#ifndef MLX_ERROR_H
#define MLX_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*mlx_error_handler_func)(const char* msg, void* data);

/* Installs `handler` (called with each error message and `data`). `dtor`, if given, is called on
 * `data` when the handler is replaced. A NULL handler restores the default (record, never exit). */
void mlx_set_error_handler(
    mlx_error_handler_func handler,
    void* data,
    void (*dtor)(void*));

/* Reports a printf-style error through the current handler. */
void _mlx_error(const char* file, const int line, const char* fmt, ...);
#define mlx_error(...) _mlx_error(__FILE__, __LINE__, __VA_ARGS__)

/* Extension: the last message reported on this thread ("" if none). Valid until the next error on
 * this thread. Recorded whatever handler is installed. */
const char* mlx_last_error(void);

/* Extension: forgets this thread's last message. */
void mlx_clear_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
