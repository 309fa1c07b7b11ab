// hostpath-provisioner: the test bed's dynamic PersistentVolume provisioner. A volume is a
// directory of the node the scheduler picked for the claim's first pod (the StorageClass binds
// WaitForFirstConsumer): <root>/<node>/<volumes-dir>/<pv>, and the PV is a hostPath volume pinned
// to that node, as a local disk would be. Deleting a claim whose class reclaims with Delete
// removes the directory. One process serves every node; it runs on the host, like the control
// plane, so a node's faults do not stop it (the volumes stay with their node all the same).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v11/controller"
)

type hostPathProvisioner struct {
	root       string
	volumesDir string
}

// volumes is the directory of a node's volumes; the node must be one of the test bed's (a
// directory under root), never a name that could lead elsewhere.
func (p *hostPathProvisioner) volumes(node string) (string, error) {
	if node == "" || node != filepath.Base(node) || node == "." || node == ".." {
		return "", fmt.Errorf("node name %q is not a plain name", node)
	}
	if st, err := os.Stat(filepath.Join(p.root, node)); err != nil || !st.IsDir() {
		return "", fmt.Errorf("node %q is not a node of this test bed (no %s)", node, filepath.Join(p.root, node))
	}
	return filepath.Join(p.root, node, p.volumesDir), nil
}

func (p *hostPathProvisioner) Provision(_ context.Context, options controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	if options.SelectedNode == nil {
		return nil, controller.ProvisioningFinished, errors.New("no selected node: the StorageClass must bind WaitForFirstConsumer")
	}
	node := options.SelectedNode.Name
	volumes, err := p.volumes(node)
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	dir := filepath.Join(volumes, options.PVName)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("creating %s: %w", dir, err)
	}
	// Pods run as arbitrary non-root users (restricted profile): let any of them write.
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, fmt.Errorf("chmod %s: %w", dir, err)
	}
	hostPathType := v1.HostPathDirectory
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: options.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: *options.StorageClass.ReclaimPolicy,
			AccessModes:                   options.PVC.Spec.AccessModes,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: options.PVC.Spec.Resources.Requests[v1.ResourceStorage]},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: dir, Type: &hostPathType},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{NodeSelectorTerms: []v1.NodeSelectorTerm{{
				MatchExpressions: []v1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: v1.NodeSelectorOpIn, Values: []string{node}}},
			}}}},
		},
	}
	return pv, controller.ProvisioningFinished, nil
}

func (p *hostPathProvisioner) Delete(_ context.Context, volume *v1.PersistentVolume) error {
	if volume.Spec.HostPath == nil {
		return errors.New("not a hostPath volume")
	}
	dir := filepath.Clean(volume.Spec.HostPath.Path)
	// Never remove anything but a volume directory of a node: <root>/<node>/<volumes-dir>/<pv>.
	node := filepath.Base(filepath.Dir(filepath.Dir(dir)))
	volumes, err := p.volumes(node)
	if err != nil || filepath.Dir(dir) != volumes {
		return fmt.Errorf("refusing to delete %s: not a volume directory under %s", dir, p.root)
	}
	return os.RemoveAll(dir)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the provisioner")
	root := flag.String("root", "", "directory with one directory per node")
	volumesDir := flag.String("volumes-dir", "volumes", "directory of a node's volumes, in the node's directory")
	name := flag.String("name", "quorate.dev/testbed-hostpath", "provisioner name used by the StorageClass")
	version := flag.Bool("version", false, "print the version and exit")
	klog.InitFlags(nil)
	flag.Parse()
	if *version {
		fmt.Println("hostpath-provisioner", buildVersion)
		return
	}
	if *kubeconfig == "" || *root == "" || *volumesDir == "" || *volumesDir != filepath.Base(*volumesDir) {
		fmt.Fprintln(os.Stderr, "--kubeconfig and --root are required, and --volumes-dir is a plain directory name")
		os.Exit(2)
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("kubeconfig: %v", err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		klog.Fatalf("client: %v", err)
	}
	absRoot, err := filepath.Abs(*root)
	if err != nil {
		klog.Fatalf("root: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	pc := controller.NewProvisionController(ctx, client, *name, &hostPathProvisioner{root: absRoot, volumesDir: *volumesDir},
		controller.LeaderElection(false))
	pc.Run(ctx)
}

// buildVersion is set with -ldflags at build time (the hash of this source).
var buildVersion = "dev"
