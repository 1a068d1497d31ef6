// Command ferretdb runs FerretDB (a MongoDB-wire server) on its SQLite backend,
// embedded as a library so the build needs nothing but the Go module proxy.
//
// The gateway runs it with -listen-unix and -listen-addr="" : a Unix socket in the
// data directory, no TCP listener. FerretDB's SQLite backend has no authentication, so
// who may connect is decided by file permissions: the umask below makes the directory,
// the socket and every SQLite file private to the user that runs it (0700 / 0600).
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27017", `TCP address to listen on ("" for none)`)
	unix := flag.String("listen-unix", "", "Unix domain socket path to listen on (empty for none)")
	dataDir := flag.String("data-dir", "./data/ferretdb", "directory of the SQLite databases")
	flag.Parse()

	syscall.Umask(0o077)
	if err := os.MkdirAll(*dataDir, 0o700); err != nil {
		log.Fatal(err)
	}

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *listen, Unix: *unix},
		Handler:   "sqlite",
		SQLiteURL: "file:" + *dataDir + "/",
	})
	if err != nil {
		log.Fatal(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	log.Printf("ferretdb listening on tcp %q unix %q, data in %s", *listen, *unix, *dataDir)
	if err := f.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
