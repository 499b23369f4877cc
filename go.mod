module github.com/ovs-storage/ovs

go 1.26
