// Signal-driven shutdown: SIGINT and SIGTERM (and, where asked, SIGHUP) become ordinary events a
// main thread waits for.
#ifndef DEVBRIDGE_COMMON_SHUTDOWN_H_
#define DEVBRIDGE_COMMON_SHUTDOWN_H_

#include "absl/time/time.h"

namespace devbridge::common {

// Blocks SIGINT, SIGTERM and SIGPIPE in the calling thread and every thread it starts
// afterwards. Call first thing in main(), before any library starts a thread.
void BlockShutdownSignals();

// Waits until SIGINT or SIGTERM arrives (or RequestShutdown() is called) and returns the
// signal number (0 for RequestShutdown). Needs BlockShutdownSignals() first.
int WaitForShutdown();

// Like WaitForShutdown() but gives up after `timeout` and returns -1.
int WaitForShutdownFor(absl::Duration timeout);

// Also blocks SIGHUP (in this thread and those it starts), for a service that reloads its
// configuration on it. Call right after BlockShutdownSignals().
void BlockReloadSignal();

// Like WaitForShutdown() but returns SIGHUP as well (needs BlockReloadSignal()).
int WaitForShutdownOrReload();

// Makes WaitForShutdown() return, as if a signal had arrived. Safe from any thread.
void RequestShutdown();

}  // namespace devbridge::common

#endif  // DEVBRIDGE_COMMON_SHUTDOWN_H_
