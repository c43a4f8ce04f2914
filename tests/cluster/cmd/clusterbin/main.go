// Command clusterbin is one binary holding every control-plane part the tests run, so that the
// Kubernetes packages they share are compiled and linked once. The part is picked by the name it
// is called by (a symlink named kubectl runs kubectl) or by its first argument.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"github.com/spf13/cobra"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

const usage = `usage: clusterbin PART [flags]
parts: etcd, pki, kube-apiserver, kube-controller-manager, kubectl`

func main() {
	part := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if part == "clusterbin" {
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
		part, args = args[0], args[1:]
	}
	// The upstream commands read os.Args themselves through cobra: hand them their own.
	os.Args = append([]string{part}, args...)
	os.Exit(run(part, args))
}

func run(part string, args []string) int {
	switch part {
	case "etcd":
		return runEtcd(args)
	case "pki":
		return runPKI(args)
	case "kube-apiserver":
		return runCobra(apiserver.NewAPIServerCommand(), args)
	case "kube-controller-manager":
		return runCobra(controllermanager.NewControllerManagerCommand(), args)
	case "kubectl":
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) //nolint:errcheck
		command := kubectl.NewDefaultKubectlCommand()
		command.SetArgs(args)
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	default:
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
}

func runCobra(command *cobra.Command, args []string) int {
	command.SetArgs(args)
	return cli.Run(command)
}
