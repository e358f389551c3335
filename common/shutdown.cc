#include "common/shutdown.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

namespace devbridge::common {
namespace {

// SIGUSR2 carries RequestShutdown() to the waiting thread.
constexpr int kRequestSignal = SIGUSR2;

sigset_t ShutdownSet() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, kRequestSignal);
  return set;
}

int Translate(int sig) { return sig == kRequestSignal ? 0 : sig; }

}  // namespace

void BlockShutdownSignals() {
  sigset_t set = ShutdownSet();
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForShutdown() {
  const sigset_t set = ShutdownSet();
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return Translate(sig);
}

void BlockReloadSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForShutdownOrReload() {
  sigset_t set = ShutdownSet();
  sigaddset(&set, SIGHUP);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return Translate(sig);
}

int WaitForShutdownFor(absl::Duration timeout) {
  const sigset_t set = ShutdownSet();
  const timespec ts = absl::ToTimespec(timeout);
  for (;;) {
    const int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig >= 0) return Translate(sig);
    if (errno == EAGAIN) return -1;
  }
}

void RequestShutdown() { kill(getpid(), kRequestSignal); }

}  // namespace devbridge::common
