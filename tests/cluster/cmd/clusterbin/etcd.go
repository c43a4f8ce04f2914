package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// runEtcd serves one embedded etcd member on loopback until SIGTERM or SIGINT.
func runEtcd(args []string) int {
	flags := flag.NewFlagSet("etcd", flag.ContinueOnError)
	dataDir := flags.String("data-dir", "", "where etcd keeps its data")
	client := flags.String("listen-client-url", "http://127.0.0.1:2379", "client URL")
	peer := flags.String("listen-peer-url", "http://127.0.0.1:2380", "peer URL (one member: nobody dials it)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	clientURL, err := url.Parse(*client)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: client url:", err)
		return 2
	}
	peerURL, err := url.Parse(*peer)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: peer url:", err)
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// At warn, etcd logs every Maintenance/Status call the API server makes as "request stats".
	cfg.LogLevel = "error"
	// A throw-away test store: durability on power loss buys nothing and fsync costs seconds.
	cfg.UnsafeNoFsync = true
	server, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: start:", err)
		return 1
	}
	defer server.Close()
	select {
	case <-server.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd: ready on", clientURL.String())
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60s")
		return 1
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-server.Err():
		fmt.Fprintln(os.Stderr, "etcd: serve:", err)
		return 1
	case <-stop:
		return 0
	}
}
