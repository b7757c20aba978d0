package hub

import (
	"sync"
	"time"
)

// workers runs short tasks on goroutines that outlive them, so that a task
// does not pay for a new goroutine growing its stack through the hub's
// deep store path (runtime.copystack was 6 % of the orders profile when
// each stored publish had a goroutine of its own). A task goes to an idle
// worker if one waits, else to a new one; a worker idle for workerIdle
// ends. Nothing bounds the workers here: the callers bound their tasks
// (pipeline.go: per session).
type workers struct {
	tasks chan func()
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// workerIdle is how long a worker waits for a next task before it ends.
const workerIdle = 2 * time.Second

func newWorkers() *workers {
	return &workers{tasks: make(chan func()), stop: make(chan struct{})}
}

// run runs fn on a worker.
func (w *workers) run(fn func()) {
	select {
	case <-w.stop: // the hub is stopping: a session cut short ends its last tasks
		go fn()
		return
	default:
	}
	select {
	case w.tasks <- fn:
	default:
		w.wg.Add(1)
		go w.work(fn)
	}
}

func (w *workers) work(fn func()) {
	defer w.wg.Done()
	fn()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		select {
		case fn = <-w.tasks:
			fn()
			idle.Reset(workerIdle)
		case <-idle.C:
			return
		case <-w.stop:
			return
		}
	}
}

// close ends the idle workers and waits for those running a task (the hub
// calls it once no session is left to give them one).
func (w *workers) close() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}
