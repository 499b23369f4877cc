//go:build !race

package arakoon

const raceSlowdown = 1
