// Preloaded (node --require) by tests/integration/prisma.rs: `prisma migrate dev` through a driver adapter is done
// in about two seconds, then waits up to a minute on timers before the process exits.
// Timers of 5 s or more (and idle connections) no longer keep the process alive; the work itself has none.
const setTimeoutOriginal = global.setTimeout;
global.setTimeout = function (fn, ms, ...args) {
  const timer = setTimeoutOriginal(fn, ms, ...args);
  if (typeof ms === "number" && ms >= 5000 && timer && typeof timer.unref === "function") {
    timer.unref();
  }
  return timer;
};
